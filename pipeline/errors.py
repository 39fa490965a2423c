"""The one exception type a user sees: what is wrong and what is allowed, no traceback."""


class UserError(Exception):
    """Bad parameters, missing or corrupt artifacts, unusable inputs.

    Stages print the message and exit with status 2, writing nothing.
    """


def first_line(e: Exception) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def require_finite(x, timesteps, what: str, where: str, hint: str = "", error: type[Exception] = UserError) -> None:
    """Raise `error` naming `where` and the timestep of the first row of x [rows, ...] that
    holds a NaN or Inf; timesteps has one entry per row (or a single one for all)."""
    bad = ~x.isfinite()
    if not bool(bad.any()):
        return
    row = int(bad.reshape(x.shape[0], -1).any(1).nonzero()[0, 0])
    t = timesteps.reshape(-1)
    t = t[row] if len(t) > 1 else t[0]
    raise error(f"non-finite {what} (NaN or Inf) {where} at timestep {int(t)}{hint}")
