"""Task vectors: name → tensor maps θ − θ0, stored as safetensors."""

from orthoreg_pl.task_vectors.io import TASK_VECTOR_FILE, load_task_vector, save_task_vector

__all__ = ["TASK_VECTOR_FILE", "load_task_vector", "save_task_vector"]
