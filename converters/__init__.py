"""converters: PyTorch and ONNX checkpoints to .dcz (pruning, weight sharing, Huffman coding).

Installed with the ``torch`` extra for the PyTorch inputs; see the dcconvert issue.
"""
