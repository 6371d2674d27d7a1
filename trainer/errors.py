"""Errors the training algorithms raise besides ValueError (bad input)."""


class TrainingDiverged(RuntimeError):
    """A loss or a value became NaN/inf or exploded: the run fails with this message rather
    than saving a broken model. `last_good_step`: where PPO put the policy back to, when it did."""

    def __init__(self, message: str, *, last_good_step: int | None = None):
        super().__init__(message)
        self.last_good_step = last_good_step


class CheckpointSpaceError(OSError):
    """The checkpoint folder's disk has less free space than the next checkpoint needs: the run stops
    before writing (a half-written checkpoint would fill the disk and fail anyway)."""
