"""Index lists typed by people: ``"0-3,7"`` for tokens or layers (the CLI and the app)."""

from __future__ import annotations

#: Most indices a list may name when no bound is given (a model has at most 1024 tokens).
MAX_INDICES = 4096


def parse_indices(text: str | None, count: int | None = None, what: str = "index") -> tuple[int, ...] | None:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)``; None, ``""`` or ``"all"`` -> None (all).

    ``count`` bounds the indices to ``0..count-1`` (e.g. a model's tokens); every range is
    checked *before* it is expanded, so ``"0-50000000"`` costs nothing. Raises ValueError with
    a message for people (``what`` names the thing: "token", "layer") on a bad or
    out-of-range entry, an open range (``"3-"``) or a list longer than :data:`MAX_INDICES`.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    bound = MAX_INDICES if count is None else count
    many = "indices" if what == "index" else f"{what}s"
    have = f"the model has {count} {many} (0-{count - 1})" if count else f"at most {MAX_INDICES} {many}"
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        a_text, dash, b_text = part.partition("-")
        try:
            a = int(a_text)
            b = int(b_text) if dash else a
        except ValueError:
            raise ValueError(f"{many} {text!r}: {part!r} is not a number or a range like 0-3") from None
        if a < 0 or b < a:
            raise ValueError(f"{many} {text!r}: {part!r} is not a range from low to high (like 0-3)")
        if b >= bound:
            raise ValueError(f"{many} {text!r}: {b} is out of range: {have}")
        if len(out) + (b - a + 1) > MAX_INDICES:
            raise ValueError(f"{many} {text!r}: more than {MAX_INDICES} {many}")
        out += range(a, b + 1)
    return tuple(out)
