"""Errors the training algorithms raise besides ValueError (bad input)."""


class TrainingDiverged(RuntimeError):
    """A loss or a value became NaN/inf or exploded: the run fails with this message rather
    than saving a broken model."""
