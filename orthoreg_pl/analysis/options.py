"""The analysis' options the command line checks, apart from the (torch) code that uses them."""

VECTORS = ("columns", "min_side")  # which vectors of a matrix the angle figure compares
