"""OrthoReg penalties: pure functions over lists of weight updates ΔW (ortho.py), and their options
(options.py, without torch: the command line is checked with them before torch loads)."""
