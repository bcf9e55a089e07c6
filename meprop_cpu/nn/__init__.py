"""Layers, activations, loss and models with explicit forward / backward.

Every module has ``forward(x)`` and ``backward(dy) -> dx``; a module with
weights exposes them as :class:`Parameter` objects whose ``grad`` the
backward pass sets (a :class:`~meprop_cpu.kernels.RowGrad` for weight
matrices, a dense array for biases). Arrays are float32 and C-contiguous.

meProp lives in :class:`Linear` (and :class:`LSTM`): with ``k`` set, its backward
keeps only the top-k entries of each example's output gradient and runs the
sparse kernels, so the weight gradient touches only the selected rows of ``W``.

* :mod:`.layers`: Parameter, Module, Linear, the activations, Dropout, the loss;
* :mod:`.models`: Sequential, MLP, load;
* :mod:`.lstm`: the LSTM layer (meProp backward through time).
"""
from .layers import (DEFAULT_MODE, MODES, Cube, Dropout, Identity, Linear, Module, Parameter,
                     ReLU, SoftmaxCrossEntropy, Tanh)
from .lstm import DEFAULT_LSTM_MODE, LSTM, LSTM_MODES
from .models import MLP, Sequential, load

__all__ = ["Parameter", "Module", "Linear", "ReLU", "Tanh", "Cube", "Dropout", "Identity",
           "SoftmaxCrossEntropy", "Sequential", "MLP", "load", "MODES", "DEFAULT_MODE",
           "LSTM", "LSTM_MODES", "DEFAULT_LSTM_MODE"]
