"""The instruction templates of recommendation prompts (eapo_exp.data.prompts fills them)."""

from __future__ import annotations

# Slots: {noun} singular item noun, {nouns} plural, {history} the user's titles oldest first,
# {candidates} the candidate titles in sample order. Every template uses every slot.
TEMPLATES: dict[str, str] = {
    "chronological": (
        "Here are the {nouns} a user engaged with, from oldest to most recent: {history}.\n"
        "Based on this history, which one of the following {nouns} will the user choose next? "
        "Options: {candidates}.\n"
        "Reply with the title of exactly one {noun} from the options."
    ),
    "next_pick": (
        "A person's recent {nouns}, in order: {history}.\n"
        "Pick the {noun} they are most likely to go for next from this list: {candidates}."
    ),
    "assistant": (
        "You are a recommendation assistant. The user's past {nouns} are: {history}.\n"
        "Recommend one {noun} for them from these candidates: {candidates}. "
        "Give only its title."
    ),
    "candidates_first": (
        "Candidate {nouns}: {candidates}.\n"
        "The user previously enjoyed these {nouns}: {history}.\n"
        "Which candidate {noun} should be recommended to them next?"
    ),
    "profile": (
        "User profile, built from the {nouns} they interacted with: {history}.\n"
        "Select the {noun} that best matches this profile among: {candidates}."
    ),
    "question": (
        "Someone liked the following {nouns}: {history}. "
        "Which {noun} from {candidates} would they most likely pick next?"
    ),
    "task_format": (
        "Task: next-{noun} recommendation.\n"
        "History of {nouns}: {history}\n"
        "Candidate {nouns}: {candidates}\n"
        "Output the title of the single most suitable candidate."
    ),
    "continue_sequence": (
        "The sequence of {nouns} below reflects one user's taste over time: {history}.\n"
        "Continue the sequence with one {noun} chosen from {candidates}."
    ),
    "shortlist": (
        "From the shortlist of {nouns} {candidates}, choose the {noun} that fits best "
        "after this user's history: {history}."
    ),
    "friend": (
        "A friend asks you for a {noun} suggestion. They have already tried these {nouns}: "
        "{history}. You may only suggest one of: {candidates}. Which {noun} do you suggest?"
    ),
    "interaction_log": (
        "Consider a user whose interaction log contains the following {nouns}: {history}.\n"
        "Among the candidate {nouns} {candidates}, name the {noun} the user is most likely "
        "to interact with next."
    ),
    "minimal": (
        "Past {nouns}: {history}\n"
        "Candidate {nouns}: {candidates}\n"
        "Which {noun} comes next?"
    ),
}

TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATES)


def plural(noun: str) -> str:
    """Naive English plural for an item noun (movie -> movies, category -> categories)."""
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"
