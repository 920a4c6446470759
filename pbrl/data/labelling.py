"""The scripted teacher of a labelling run, as ``pbrl data label`` and ``pbrl data agreement`` choose it, and the
sentence a dataset card keeps about how its labels were made."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbrl.errors import ConfigError, describe

if TYPE_CHECKING:
    from pbrl.data.teachers import Group, Teacher

CRITIC_WORDS = {"iql": "IQL's in-sample optimal value fitted to the true reward",
                "expert": "the advantage under an expert's critic",
                "behaviour": "a value fitted to the behaviour's own returns (weak)"}
"""How a card names each regret critic."""


def make_teacher(kind: str, *, critic: str | None = None, expert: str | None = None, critic_steps: int | None = None,
                 beta: float | None = None, mistake: float = 0.0, skip_threshold: float | None = None,
                 equal_margin: float = 0.0, myopic: float = 1.0, discount: float | None = None, seed: int = 0
                 ) -> Teacher:
    """The teacher ``kind`` (``scripted`` or ``return``: Bradley-Terry on segment returns; ``regret``: on summed
    advantages) with its B-Pref noise. Only ``regret`` has a critic; naming an ``expert`` run implies the
    ``expert`` critic. Errors name the command-line options, as :class:`~pbrl.data.teachers.Teacher`'s own do."""
    from pbrl.data.teachers import Teacher

    regret = kind == "regret"
    if not regret and (critic or expert):
        raise ConfigError(describe("--critic/--expert", "critic", critic or expert,
                                   "nothing: only `--teacher regret` has a critic"))
    if expert and critic not in (None, "expert"):
        raise ConfigError(describe("--expert", "critic", repr(critic), "'expert' (or leave --critic out)"))
    resolved_critic = "expert" if expert else critic
    return Teacher(utility="regret" if regret else "return", beta=beta, mistake=mistake,
                   skip_threshold=skip_threshold, equal_margin=equal_margin, myopic=myopic, discount=discount,
                   seed=seed, critic=resolved_critic if regret else None, expert=expert, value_steps=critic_steps)


def describe_labels(teacher: Teacher, groups: list[Group] | None, *, pairs: int, segment: int, rank: int,
                    pairing: str, mode: str, seed: int) -> str:
    """One sentence for the card: how these labels were made (the card's description may predate them)."""
    who = (f"{len(groups)} user groups ({', '.join(g.name for g in groups)})" if groups else
           f"the {teacher.utility} teacher" + (f" (critic: {CRITIC_WORDS[teacher.critic_name]}"
                                               + (f", {teacher.expert}" if teacher.critic_name == "expert" else "") + ")"
                                               if teacher.utility == "regret" else ""))
    what = f"{pairs} {f'{rank}-way rankings' if rank else 'pairs'} of {segment}-step segments"
    within = "" if teacher.discount is None else f", discount {teacher.discount:g} inside a segment"
    noise = [f"{name} {value}" for name, value in (
        ("beta", teacher.beta), ("mistake", teacher.mistake), ("skip below", teacher.skip_threshold),
        ("equal within", teacher.equal_margin), ("myopic", teacher.myopic)) if value not in (None, 0.0, 1.0)]
    return (f"{what}, {pairing} pairing ({mode}), labelled by {who}{within}"
            + (f", noise: {', '.join(noise)}" if noise else ", no noise") + f"; seed {seed}.")
