"""Lightning's FSDPStrategy with the two fixes a training run needs (configs/trainer/fsdp.yaml).

A run calls the Trainer five times on one module (zero-shot validate and test, fit, fine-tuned
validate and test). Lightning wraps the module in FSDP again on every call; from the second call on
the transformer blocks are FSDP units already, so Lightning leaves the root unwrapped (Lightning
issue #19015) and the root's own parameters (patch embedding, positional embedding, projection) stay
sharded: the next forward fails. This strategy keeps the root wrapper of the first call.

It also runs on CPU processes over gloo (``trainer.accelerator=cpu``), which Lightning's own refuses:
torch's FSDP needs ``device_id=cpu`` there, where Lightning hands it ``None``; and torch's full
optimizer state dict, asked to offload to the CPU, returns views of one reused gather buffer when the
device is the CPU already (AdamW's exp_avg came back equal to exp_avg_sq), so on the CPU it is
gathered without offloading. Slow, but it lets the whole FSDP path run in tests without GPUs.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDPStrategy
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)
from torch.nn import Module
from torch.optim import Optimizer


class FSDPStrategy(_LightningFSDPStrategy):
    _root: FullyShardedDataParallel | None = None

    def _setup_model(self, model: Module) -> Module:
        if self._root is not None and self._root.module is model:
            return self._root  # the wrapper of an earlier call of the same Trainer, parameters in place
        if self.root_device.type == "cpu" and not any(
            isinstance(m, FullyShardedDataParallel) for m in model.modules()
        ):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
            _move_torchmetrics_to_device(model, self.root_device)
            _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        else:
            model = super()._setup_model(model)
        self._root = model if isinstance(model, FullyShardedDataParallel) else None
        return model

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        with FullyShardedDataParallel.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),  # each state cloned, not aliased
        ):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # keyed by parameter index, as Lightning's full checkpoints are
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_ID, self.model
                )
            return state
