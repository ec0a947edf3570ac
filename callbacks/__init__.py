"""Lightning callbacks of orthoreg-pl (referenced from configs/callbacks/*.yaml)."""
