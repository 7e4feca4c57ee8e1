"""The one exception type the library raises for bad input.

Every message names the input that is wrong and says how to fix it, because ComfyUI shows
the message verbatim in its error dialog and in the API's ``execution_error``.
"""

from __future__ import annotations


class TTMInputError(ValueError):
    """Bad input from the user, detected before (or instead of) doing expensive work.

    Args:
        input_name: the node input (or payload field) the problem is in, e.g. ``"masks"``.
        problem: what is wrong, with the offending value where it helps.
        fix: what the user should do instead.
    """

    def __init__(self, input_name: str, problem: str, fix: str) -> None:
        self.input_name = input_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"{input_name}: {problem}. Fix: {fix}")
