import sys, time
end = time.monotonic() + float(sys.argv[1])
x = 0
while time.monotonic() < end:
    for _ in range(10000): x += 1
