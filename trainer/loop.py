"""The training loop that SFT (trainer/sft.py) and the reward model (trainer/reward.py) share.

Epochs of shuffled batches (checkpoints.EpochOrder), each optimizer step one batch of `batch_size`
examples, its gradients accumulated over micro-batches; AdamW with a cosine schedule after a linear
warmup; gradient clipping; held-out evaluation every `eval_every` steps (once per epoch by default)
and at the end; a checkpoint every `save_every` steps and when stopped; resume from the newest
checkpoint; a stop (cancel, SIGTERM) polled once per step, between micro-batches when there is one
process, and before each batch of a held-out pass; TrainingDiverged on a non-finite loss.

A stopped run's model is neither saved nor registered, so stopping runs no held-out pass of its own
and leaves one it is in the middle of (a long held-out set took minutes to end a SIGTERMed run); a
pass that was due at that step is owed, written in the checkpoint, and run first on resume, so that
a resumed run equals one never stopped (the held-out figures choose SFT's best weights).

Each algorithm subclasses `TrainingLoop` with what is its own: the loss of a micro-batch, what the
batch's loss is a mean over, the step's and the evaluation's figures, and anything more its
checkpoints hold. Several processes: see trainer/distributed.py; every process runs the same
collectives in the same order (the micro-batch counts, the sums, the stop decision)."""

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from runconfig import RewardConfig, SFTConfig
from trainer.checkpoints import Checkpoints, EpochOrder, restore_training_state, save_together, training_state
from trainer.distributed import Team, full_tensor
from trainer.errors import TrainingDiverged
from trainer.precision import for_model

MetricsCallback = Callable[[int, int, dict[str, float]], None]


class HeldOutStopped(Exception):
    """A stop asked during a held-out pass: the pass is left unfinished and its figures unused."""


class TrainingLoop:
    name = "Training"
    """Says whose loss diverged in the TrainingDiverged message."""
    evaluate_at_start = False
    """Report the held-out figures of the untrained model (as step 0) too."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: SFTConfig | RewardConfig,
        train_rows: list,
        valid_rows: list,
        result: dict[str, float],
        *,
        on_metrics: MetricsCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoints: Checkpoints | None = None,
    ):
        self.model, self.config = model, config
        self.train_rows, self.valid_rows = train_rows, valid_rows
        self.result = result
        """The summary the run returns; also saved in every checkpoint."""
        self.on_metrics = on_metrics or (lambda step, total, metrics: None)
        self.should_stop = should_stop or (lambda: False)
        self.checkpoints = checkpoints or Checkpoints()
        self.team = Team()  # one process, or one of several under accelerate launch (trainer/distributed.py)
        self.step = 0
        self.total_steps = 0  # set by prepare()
        self.train_seconds = 0.0  # time in training steps only (not evaluation)
        self.held_out_owed = False  # the held-out pass of this step was due when the run stopped

    # --- what each algorithm says --------------------------------------------------------------

    def loss(self, model: torch.nn.Module, rows: list) -> tuple[torch.Tensor, float]:
        """(the summed loss of `rows`, a count the step's figures need summed over the batch)."""
        raise NotImplementedError

    def loss_denominator(self, batch: list) -> float:
        """What the batch's loss is the mean over (tokens, rankings): the micro-batches' summed losses
        are divided by it, so accumulating them equals one big batch."""
        raise NotImplementedError

    def step_metrics(self, batch: list, count: float) -> dict[str, float]:
        """The step's own figures besides train_loss, lr and grad_norm (and any update of self.result)."""
        return {}

    def evaluate(self) -> dict[str, float]:
        """The held-out figures, named as they are logged (valid_loss...). Runs its batches through
        self.held_out_batches, which ends the pass when a stop is asked."""
        raise NotImplementedError

    def evaluated(self, held_out: dict[str, float]) -> None:
        """Called after each held-out evaluation during training."""

    def loop_state(self) -> dict[str, Any]:
        """What else a checkpoint must hold to go on as if never stopped."""
        return {}

    def load_loop_state(self, loop: dict[str, Any]) -> None:
        pass

    def final_figures(self) -> dict[str, float]:
        """Figures for the summary once training is over (throughput...)."""
        return {}

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Trains the model in place; returns the summary (self.result)."""
        torch.manual_seed(self.config.seed)  # dropout, if the model has any
        self.prepare()
        self.resume_or_start()
        self.on_metrics(self.step, self.total_steps, {})  # the number of steps, before the first one
        self.model.train()
        while not self.result["stopped_early"] and self.step < self.total_steps and self.train_step():
            pass
        if self.result["stopped_early"]:
            self.total_steps = self.step
        self.result.update(self.final_figures())
        self.result.update(self.team.info())
        self.model.eval()
        return self.result

    def prepare(self) -> None:
        """Steps, precision, the wrapped model (DDP / FSDP), optimizer and schedule: linear warmup,
        cosine decay to min_lr_ratio of the peak."""
        config = self.config
        steps_per_epoch = math.ceil(len(self.train_rows) / config.batch_size)
        self.total_steps = steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.eval_every = config.eval_every or steps_per_epoch
        sharded = config.sharding == "fsdp" and self.team.size > 1
        self.precision = for_model(config.precision, self.model, sharded=sharded)  # fp32 masters unless bf16-pure
        self.wrapped = self.team.wrap(self.model, config.sharding, self.precision.name)  # DDP or FSDP
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # (FSDP replaced them with shards)
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=config.learning_rate,
            betas=(0.9, 0.95),
            weight_decay=config.weight_decay,
            fused=self.precision.fused_optimizer,
        )  # one kernel for all parameters (CPU and GPU)
        self.schedule = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer,
            num_warmup_steps=round(config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
            min_lr_rate=config.min_lr_ratio,
        )
        self.epochs = EpochOrder(len(self.train_rows), config.batch_size, config.seed)

    def resume_or_start(self) -> None:
        """Go on exactly where the newest checkpoint was written; with none, the starting figures."""
        resumed = self.checkpoints.load()
        if resumed is not None:
            restore_training_state(resumed, self.model, self.optimizer, self.schedule, self.precision.scaler)
            self.epochs.load(resumed["epochs"])
            loop = resumed["loop"]
            self.step, self.train_seconds = loop["step"], loop["train_seconds"]
            self.result.update(loop["result"], stopped_early=0.0, resumed_from_step=float(self.step))
            self.load_loop_state(loop)
            if loop.get("held_out_owed"):  # the stopped attempt left this step's held-out pass undone
                self.held_out_owed = True
                if not self.held_out_of_step({}):  # stopped again: the checkpoint still owes it
                    self.result["stopped_early"] = 1.0
        elif self.evaluate_at_start and self.valid_rows:
            held_out = self.evaluate_held_out()
            if held_out is None:  # stopped before the first step: nothing to save
                self.result["stopped_early"] = 1.0
                return
            self.result.update({f"initial_{name}": value for name, value in held_out.items()})
            self.on_metrics(0, self.total_steps, held_out)

    def save(self) -> None:
        loop = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "result": self.result,
            "held_out_owed": self.held_out_owed,
            **self.loop_state(),
        }
        state = training_state(self.model, self.optimizer, self.schedule, self.precision.scaler)
        save_together(self.checkpoints, self.team, self.step, {**state, "epochs": self.epochs.state(), "loop": loop})

    def train_step(self) -> bool:
        """One optimizer step on the next batch, then its evaluation and checkpoint when due. False
        when the run stops here (a cancel or SIGTERM)."""
        batch = [self.train_rows[i] for i in self.epochs.batch()]
        started = time.perf_counter()
        denominator = self.loss_denominator(batch)
        loss_total, count = self.accumulate(batch, denominator)
        if self.result["stopped_early"]:  # between micro-batches: the batch is dropped, resume redoes it
            self.optimizer.zero_grad(set_to_none=True)
            if self.checkpoints.due(self.step, self.config.save_every, stopping=True):
                self.save()
            return False
        self.epochs.advance()
        loss = loss_total / denominator
        # Stop on divergence rather than save a broken model.
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{self.name} loss became {loss} at step {self.step + 1}: lower learning_rate "
                f"(now {self.config.learning_rate})."
            )
        max_norm = self.config.max_grad_norm
        norm = self.precision.step(self.optimizer, lambda: torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        grad_norm = float(full_tensor(norm))
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.train_seconds += time.perf_counter() - started
        self.result.update(steps=float(self.step), train_loss=loss)
        metrics = {
            "train_loss": loss,
            **self.step_metrics(batch, count),
            "lr": self.schedule.get_last_lr()[0],
            "grad_norm": grad_norm,
        }

        # Held-out figures every eval_every steps and at the end (owed, not run, when stopping).
        self.held_out_owed = bool(self.valid_rows) and (
            self.step % self.eval_every == 0 or self.step == self.total_steps
        )
        stopping = self.team.any(self.should_stop())  # cancel / SIGTERM, polled once per step, decided together
        if not stopping:
            stopping = not self.held_out_of_step(metrics)
        else:
            self.on_metrics(self.step, self.total_steps, metrics)

        # Checkpoint; on cancel / SIGTERM stop at this safe point with what we have.
        if self.checkpoints.due(self.step, self.config.save_every, stopping=stopping):
            self.save()
        if stopping:
            self.result["stopped_early"] = 1.0
            return False
        return True

    def held_out_of_step(self, metrics: dict[str, float]) -> bool:
        """The step's held-out pass when it is owed, then its metrics reported; False (the pass
        still owed, the metrics reported without it) when a stop came during the pass."""
        if self.held_out_owed:
            held_out = self.evaluate_held_out()
            if held_out is None:
                self.on_metrics(self.step, self.total_steps, metrics)
                return False
            self.held_out_owed = False
            metrics.update(held_out)
            self.result.update(held_out)
            self.evaluated(held_out)
        self.on_metrics(self.step, self.total_steps, metrics)
        return True

    def accumulate(self, batch: list, denominator: float) -> tuple[float, float]:
        """Backward passes over this process's micro-batches of `batch` (the gradient all-reduce on
        the last one only); the summed loss and count over the team. A stop between micro-batches
        (one process only: with several, the others would wait in an all-reduce) sets stopped_early."""
        team, precision = self.team, self.precision
        loss_total, count = 0.0, 0.0
        for micro, (rows, weight, last) in enumerate(team.micro_batches(batch, self.config.micro_batch_size)):
            if micro and team.size == 1 and self.should_stop():
                self.result["stopped_early"] = 1.0
                break
            with team.no_sync(self.wrapped, last=last):
                with precision.autocast():
                    loss_sum, rows_count = self.loss(self.wrapped, rows)
                precision.backward(loss_sum * (weight * team.loss_scale / denominator))
            loss_total += loss_sum.item() * weight
            count += rows_count * weight
        loss_total, count = team.sum(loss_total, count)
        return loss_total, count

    def evaluate_held_out(self) -> dict[str, float] | None:
        """The held-out figures, or None when a stop was asked during the pass."""
        try:
            with self.precision.autocast():
                return self.evaluate()
        except HeldOutStopped:
            return None

    def stop_decided(self) -> bool:
        """should_stop() decided by the whole team (a collective: every process calls it as often)."""
        return self.team.any(self.should_stop())

    def held_out_batches(self, items: list, size: int) -> Iterator[tuple[list, float]]:
        """team.batches of a held-out pass, the stop polled before each one (every process runs as
        many batches, so the decisions meet); a stop raises HeldOutStopped, which ends the pass."""
        for batch in self.team.batches(items, size):
            if self.stop_decided():
                raise HeldOutStopped()
            yield batch
