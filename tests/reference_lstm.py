"""Naive numpy (float64) reference of the LSTM layer and its meProp backward
(see meprop_cpu/lstm.py and include/meprop/lstm.h for the semantics)."""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_forward(X, W, U, b):
    """Returns H (T, h) and the cache for lstm_backward."""
    X, W, U, b = (np.asarray(a, dtype=np.float64) for a in (X, W, U, b))
    T, h = X.shape[0], U.shape[1]
    H = np.zeros((T + 1, h))
    C = np.zeros((T + 1, h))
    gates = np.zeros((T, 4 * h))
    for t in range(T):
        z = W @ X[t] + b + U @ H[t]
        i, f = sigmoid(z[:h]), sigmoid(z[h:2 * h])
        g, o = np.tanh(z[2 * h:3 * h]), sigmoid(z[3 * h:])
        C[t + 1] = f * C[t] + i * g
        H[t + 1] = o * np.tanh(C[t + 1])
        gates[t] = np.concatenate([i, f, g, o])
    return H[1:], (X, W, U, H, C, gates)


def topk_gate_mask(dz, h, k):
    """Per gate block of dz (4h,), keep the k largest |dz| (ties: lower index
    first; zeros never preferred). Returns the kept indices, ascending."""
    keep = []
    for q in range(4):
        blk = dz[q * h:(q + 1) * h]
        order = sorted(range(h), key=lambda j: (-abs(blk[j]), j))
        keep += sorted(q * h + j for j in order[:k])
    return np.array(keep, dtype=np.int64)


def lstm_backward(cache, dH, k=None):
    """Gradients (dX, dW, dU, db) and the per-step selections (list of index
    arrays, or None for dense). k None or >= h: dense."""
    X, W, U, H, C, gates = cache
    dH = np.asarray(dH, dtype=np.float64)
    T, h = X.shape[0], U.shape[1]
    sparse = k is not None and k < h
    dX, dW, dU, db = np.zeros_like(X), np.zeros_like(W), np.zeros_like(U), np.zeros(4 * h)
    dh, dc = np.zeros(h), np.zeros(h)
    sel = []
    for t in reversed(range(T)):
        i, f, g, o = (gates[t, q * h:(q + 1) * h] for q in range(4))
        tc = np.tanh(C[t + 1])
        dht = dH[t] + dh
        dct = dc + dht * o * (1 - tc * tc)
        dz = np.concatenate([dct * g * i * (1 - i), dct * C[t] * f * (1 - f),
                             dct * i * (1 - g * g), dht * tc * o * (1 - o)])
        dc = dct * f
        db += dz
        if sparse:
            keep = topk_gate_mask(dz, h, k)
            dzs = np.zeros_like(dz)
            dzs[keep] = dz[keep]
            sel.insert(0, keep)
        else:
            dzs = dz
        dh = U.T @ dzs
        dW += np.outer(dzs, X[t])
        dU += np.outer(dzs, H[t])
        dX[t] = W.T @ dzs
    return dX, dW, dU, db, (sel if sparse else None)
