"""The penalty's options, apart from its (torch) code, so the command line is checked without torch."""

NORMS: tuple[str, ...] = ("fro", "fro_squared")  # ‖G − I‖_F (the reference code) | its square (the paper)
GRAMS: tuple[str, ...] = ("min_side", "columns")  # the smaller Gram of ΔW | always ΔWᵀΔW
