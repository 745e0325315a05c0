"""The one table of methods: what a job evaluates, what the report calls each row, which
method a row is compared with, what its result depends on, and the order of report rows.

A preference method is a loss x a β schedule. Its name, display label, base and dependencies
derive from one LOSSES row and one SCHEDULES row, so every combination is a method and
adding a loss or a β schedule is one row here (plus its module and yaml).
`conf/method/<name>.yaml` is a preset for one row (tests/test_methods.py checks each preset
against its row).
"""

from __future__ import annotations

from dataclasses import dataclass

from eapo_exp.errors import ConfigError


@dataclass(frozen=True)
class Loss:
    name: str      # conf/loss/<name>.yaml
    display: str


@dataclass(frozen=True)
class Schedule:
    """A β schedule and how it names the methods it makes: `label` and `display` are
    formatted with loss (name or display label) and compact (display label without "-")."""

    name: str                 # conf/beta_schedule/<name>.yaml
    label: str                # file-name-safe method name, e.g. "ea_{loss}"
    display: str              # e.g. "EA-{compact}"
    base: str | None = None   # the schedule of the method this one is compared with
    uses_expert: bool = False  # reads the frozen expert's scores


LOSSES = (Loss("dpo", "DPO"), Loss("sdpo", "S-DPO"), Loss("ipo", "IPO"), Loss("cpo", "CPO"))
SCHEDULES = (
    Schedule("fixed", "{loss}", "{loss}"),
    Schedule("beta_dpo", "beta_{loss}", "β-{loss}", base="fixed"),
    Schedule("expert", "ea_{loss}", "EA-{compact}", base="fixed", uses_expert=True),
)
# The paper's own name for DPO with the expert β (the rule would say ea_dpo, EA-DPO).
PAPER_NAMES = {("dpo", "expert"): ("eapo", "EAPO")}
# Display labels of the sequential experts (conf/expert/<name>.yaml), in report order.
EXPERT_NAMES = {"gru4rec": "GRU4Rec", "caser": "Caser", "sasrec": "SASRec"}

# What a row's result is computed from (the artifacts and steps in its depends_on), as the
# config keys each one reads: a swept key outside a row's keys does not split that row.
# item_expert: the expert whose item embeddings fill hybrid item slots (LLaRA); the report
# derives item_expert.data_fraction (prompt.item_expert_data_fraction, else the expert's).
CONFIG_KEYS = {
    "samples": ("dataset",),
    "expert": ("expert",),
    "item_expert": ("item_expert", "expert.name"),
    "backbone": ("backbone", "prompt"),
    "sft": ("train.sft",),
    "preference": ("loss", "beta_schedule", "train.preference"),
    "chatrec": ("chatrec",),
    "evaluation": ("eval",),
}


@dataclass(frozen=True)
class Method:
    """One row of the table.

    kind: what produces its rows (popularity and expert: the expert stage; zero_shot and sft:
    the SFT stage; chatrec; preference). An `expert` row is named after its expert
    (EXPERT_NAMES), not `display`.
    """

    name: str                       # file-name-safe: eval label, conf/method/<name>.yaml
    display: str
    kind: str
    depends_on: tuple[str, ...]     # keys of CONFIG_KEYS
    loss: str | None = None
    schedule: str | None = None
    base: str | None = None         # name of the method it improves on


# What every row of an LLM (and not a chat endpoint) is computed from, besides its training.
LLM_INPUTS = ("samples", "backbone")


def preference_method(loss: str, schedule: str) -> Method:
    """The row of a loss x β-schedule pair (dpo x expert: EAPO)."""
    loss_row = _row(LOSSES, loss, "loss", "LOSSES")
    schedule_row = _row(SCHEDULES, schedule, "beta_schedule", "SCHEDULES")
    compact = loss_row.display.replace("-", "")
    name, display = PAPER_NAMES.get((loss, schedule)) or (
        schedule_row.label.format(loss=loss),
        schedule_row.display.format(loss=loss_row.display, compact=compact))
    base = preference_method(loss, schedule_row.base).name if schedule_row.base else None
    expert = ("expert",) if schedule_row.uses_expert else ()
    depends_on = (*LLM_INPUTS, "sft", "preference", *expert, "evaluation")
    return Method(name, display, "preference", depends_on, loss, schedule, base)


def _row(rows: tuple, name: str, key: str, table: str):
    for row in rows:
        if row.name == name:
            return row
    raise ConfigError(f"{key}={name} has no row in eapo_exp.methods.{table} "
                      f"(known: {', '.join(r.name for r in rows)})")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("popularity", "Popularity", "popularity", ("samples",)),
    Method("expert_only", "Expert", "expert", ("samples", "expert")),
    Method("zero_shot", "Zero-shot", "zero_shot", (*LLM_INPUTS, "evaluation")),
    Method("chatrec", "ChatRec", "chatrec", ("samples", "chatrec", "evaluation")),
    Method("sft", "SFT", "sft", (*LLM_INPUTS, "sft", "evaluation")),
    # SFT on hybrid item prompts (prompt.item_repr=hybrid): the projector reads the expert.
    Method("llara", "LLaRA", "sft", (*LLM_INPUTS, "item_expert", "sft", "evaluation"),
           base="sft"),
    *(preference_method(loss.name, schedule.name) for loss in LOSSES for schedule in SCHEDULES),
)}
# Every method is also compared with this one.
REFERENCE = "sft"


def expert_display(name: str) -> str:
    return EXPERT_NAMES.get(name.lower(), name)


def sft_method(sft_enabled: bool, item_repr: str) -> Method:
    """The row of an SFT-stage model: zero-shot, SFT, or LLaRA (SFT on hybrid items)."""
    if not sft_enabled:
        return METHODS["zero_shot"]
    return METHODS["llara" if item_repr == "hybrid" else "sft"]


def job_method(stage: str, loss: str, schedule: str, sft_enabled: bool,
               item_repr: str = "title") -> Method | None:
    """The method a job of this config runs (None for stage=data); stage=all also evaluates
    SFT, every stage from `expert` on also the expert and popularity."""
    if stage in ("preference", "all"):
        return preference_method(loss, schedule)
    if stage == "sft":
        return sft_method(sft_enabled, item_repr)
    return {"expert": METHODS["expert_only"], "chatrec": METHODS["chatrec"]}.get(stage)


def report_order() -> list[str]:
    """Display labels in report order (the expert row expanded to every known expert)."""
    order = []
    for method in METHODS.values():
        order += list(EXPERT_NAMES.values()) if method.kind == "expert" else [method.display]
    return order
