"""The exit codes of ``suanli run``, in one place, as ``docker run`` has them (issue 17 item 2).

Rule 1: the job's own exit code passes through (0..255; a job killed by signal n exits 128+n, as
Docker reports it: 137 for SIGKILL, which includes the kernel's out-of-memory kill).
Rule 2: Suanli's own failures use the three codes Docker uses for its own, which jobs rarely use, and
124 (as ``timeout`` has it) for a job that the provider's owner took the machine back from:

=====  ==================================================================================
code   meaning
=====  ==================================================================================
124    preempted: the provider's owner came back and the job was stopped (final reason
       ``owner_preempt``, issue 18); billed up to the pause and no further; run it again
125    suanli itself could not run the request: a usage, option, configuration or key error
       (nothing was created, sent or recorded), or the buyer agent failed or went away
126    no provider could take the job: no offer fits it (each provider's reason is printed),
       or every candidate refused, stayed silent or could not be reached; nothing ran
127    the job did not end by itself: the provider failed it or was lost, or the run was left
       before the final receipt; the evidence so far is in the buyer's database
130    interrupted (Ctrl-C) before an agreement was made
=====  ==================================================================================

Rule 3: ``--json``'s document holds ``exit_code`` (what the process exits with) and says whose it is:
``"exit_source": "job"`` when the code is the job's own, ``"suanli"`` when it is one of the above, so a
job that itself exits 126 is never mistaken for "no provider".
The other commands keep their own contract (``node.cli``: 0 ok, 1 audit findings, 2 unusable input).
"""

from __future__ import annotations

from typing import Literal

EXIT_PREEMPTED = 124
EXIT_SUANLI = 125
EXIT_NO_PROVIDER = 126
EXIT_JOB_LOST = 127
EXIT_INTERRUPTED = 130

JOB: Literal["job"] = "job"
SUANLI: Literal["suanli"] = "suanli"

MEANINGS: dict[int, str] = {
    EXIT_PREEMPTED: "preempted: the provider's owner took the machine back (owner_preempt); billed up to the pause",
    EXIT_SUANLI: "suanli could not run the request (usage, option, config or key error; or the agent failed)",
    EXIT_NO_PROVIDER: "no provider could take the job (nothing ran)",
    EXIT_JOB_LOST: "the job did not end by itself (the provider failed it or was lost); evidence kept",
    EXIT_INTERRUPTED: "interrupted before an agreement was made",
}


def job_exit_code(code: int | None) -> tuple[int, Literal["job", "suanli"]]:
    """The process exit code for a job that reported ``code``, and whose it is (Rules 1 and 3)."""
    if code is not None and 0 <= code <= 255:
        return code, JOB
    return EXIT_JOB_LOST, SUANLI


def final_exit_code(reason: str | None, code: int | None) -> tuple[int, Literal["job", "suanli"]]:
    """``job_exit_code``, except that a preempted job (its final's reason) exits EXIT_PREEMPTED (Rule 2): the
    code its container died with (137, killed frozen) is not the job's own."""
    return (EXIT_PREEMPTED, SUANLI) if reason == "owner_preempt" else job_exit_code(code)


def epilog() -> str:
    """The exit-code table for ``suanli run --help``."""
    lines = ["exit codes: the job's own (0-255; killed by signal N: 128+N, 137 when out of memory), or"]
    lines += [f"  {code}  {text}" for code, text in MEANINGS.items()]
    lines.append('with --json, "exit_source" says which: "job" or "suanli"')
    return "\n".join(lines)
