"""Write the sample data under data/: labelled reviews (CSV) and a plain-text play for the
character language model. Every sentence comes from the word lists and templates below, written
for this project; the same seed writes the same files.

    python scripts/make_sample_data.py          # rewrites data/reviews/*.csv and data/play.txt
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

# What a review is about: its things, and what only suits that kind of thing.
SUBJECTS = {
    "film": ["the plot", "the acting", "the soundtrack", "the ending", "the cast", "the script",
             "the camera work", "the lead actor", "the dialogue", "the pacing"],
    "book": ["the prose", "the characters", "the last chapter", "the story", "the translation",
             "the opening", "the narrator", "the dialogue", "the plot"],
    "restaurant": ["the soup", "the service", "the staff", "the dessert", "the pasta",
                   "the bread", "the wine list", "the fish", "the room", "the coffee"],
    "hotel": ["the room", "the bed", "the breakfast", "the view", "the staff", "the shower",
              "the location", "the lobby", "the pool"],
    "headphones": ["the sound", "the battery", "the fit", "the case", "the bass",
                   "the microphone", "the build", "the noise cancelling"],
}
NOUNS = {"film": "film", "book": "book", "restaurant": "place", "hotel": "hotel",
         "headphones": "pair of headphones"}
GOOD = ["wonderful", "delightful", "superb", "charming", "excellent", "gripping", "moving",
        "brilliant", "lovely", "fantastic", "warm", "clever", "generous", "fresh", "beautiful",
        "perfect", "great", "solid", "impressive", "friendly", "comfortable", "sharp", "rich",
        "memorable", "smooth"]
BAD = ["dull", "tedious", "awful", "disappointing", "clumsy", "bland", "cold", "noisy", "flimsy",
       "overpriced", "boring", "lifeless", "dreadful", "rude", "stale", "cheap", "weak",
       "forgettable", "sloppy", "dirty", "uncomfortable", "muddy", "slow", "greasy", "shallow"]
ADVERBS = ["really", "truly", "quite", "very", "simply", "rather", "so", "utterly", "pretty",
           "genuinely", ""]
OPENERS = ["Honestly,", "To be fair,", "From start to finish", "Overall", "I have to say",
           "In short,", "On the whole", "Frankly,", "Right away", ""]
VERDICTS = {
    "positive": ["Highly recommended.", "I would happily go back.", "Worth every penny.",
                 "I loved it.", "Five stars from me.", "I will be recommending it to friends.",
                 "A real pleasure.", "I can't wait to try it again.", "Easily the best this year.",
                 "Thank you for a lovely time."],
    "negative": ["I want my money back.", "Avoid.", "Not worth the price.",
                 "I would not go again.", "One star, and that is generous.",
                 "What a waste of an evening.", "I regret it.", "Save your money.",
                 "Never again.", "I expected much more."],
}
SENTENCES = [
    "{opener} {subject} was {adverb} {adjective}.",
    "{Subject} felt {adverb} {adjective}, and {subject2} was {adjective2} too.",
    "The {noun} is {adverb} {adjective}.",
    "What a {adjective} {noun}.",
    "{Subject} is {adjective} and {adjective2}.",
    "I found {subject} {adverb} {adjective}.",
    "We thought {subject} was {adjective}.",
    "My partner said {subject} was {adjective}, and I agree.",
]


def _clean(text: str) -> str:
    return " ".join(text.split()).replace(" ,", ",")


def _sentence(rng: random.Random, kind: str, words: list[str]) -> str:
    subject, subject2 = rng.sample(SUBJECTS[kind], 2)
    adjective, adjective2 = rng.sample(words, 2)
    text = rng.choice(SENTENCES).format(
        opener=rng.choice(OPENERS), subject=subject, Subject=subject.capitalize(),
        subject2=subject2, adverb=rng.choice(ADVERBS), adjective=adjective,
        adjective2=adjective2, noun=NOUNS[kind])
    text = _clean(text)
    return text[0].upper() + text[1:]


def review(rng: random.Random, label: str) -> str:
    """One review: one to three sentences of its label, sometimes a small point the other way,
    and sometimes a verdict."""
    kind = rng.choice(sorted(SUBJECTS))
    words, other = (GOOD, BAD) if label == "positive" else (BAD, GOOD)
    parts = [_sentence(rng, kind, words) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:  # a small point against, outweighed by the rest
        thing = rng.choice(SUBJECTS[kind])
        parts.insert(rng.randint(0, len(parts)), f"Only {thing} was a little {rng.choice(other)}.")
    if rng.random() < 0.6:
        parts.append(rng.choice(VERDICTS[label]))
    return " ".join(parts)


def reviews(count: int, seed: int, avoid: set[str]) -> list[tuple[str, str]]:
    """`count` distinct reviews, half of each label, none in `avoid`."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    seen = set(avoid)
    while len(rows) < count:
        label = ("positive", "negative")[len(rows) % 2]
        text = review(rng, label)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """A text,label CSV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)


# The play: speakers, and the lines they say, from phrases put together.
SPEAKERS = ["ANNA", "BRUNO", "CLARA", "DANIEL", "ELSA", "FELIX", "GRETA", "HUGO", "THE GARDENER",
            "THE MAYOR", "A MESSENGER", "THE DOCTOR"]
PLACES = ["the harbour", "the old mill", "the market", "the orchard", "the station", "the bridge",
          "the garden", "the square", "the lighthouse", "the bakery", "the hill", "the river"]
TIMES = ["tonight", "at dawn", "this morning", "before the rain", "after supper", "tomorrow",
         "at noon", "by the evening train", "when the bells ring", "in the spring"]
THINGS = ["the letter", "the key", "the lantern", "the map", "the ring", "the little boat",
          "the blue coat", "the clock", "the bread", "the old book", "the umbrella", "the ticket"]
FEELINGS = ["glad", "afraid", "tired", "certain", "sorry", "curious", "worried", "proud",
            "restless", "hopeful"]
LINES = [
    "Have you seen {thing}? I left it by {place}.",
    "I was at {place} {time}, and nobody came.",
    "Then we must go to {place} {time}.",
    "I am {feeling}, {name}. I am {feeling2} and I do not know why.",
    "Do not speak of {thing} again.",
    "You always say that, and then you forget {thing}.",
    "Listen. Someone is walking by {place}.",
    "If the weather holds, we shall meet at {place} {time}.",
    "{name}, you are {feeling} tonight.",
    "Who gave you {thing}?",
    "The mayor wants {thing} returned {time}.",
    "I found it at {place}, under the stones.",
    "No, no. It was {name} who took {thing}.",
    "Well then, bring {thing} and a lantern.",
    "How quiet it is at {place}.",
    "I have waited for you since {time2}.",
    "Let us not quarrel. Sit down and eat.",
    "Why are you so {feeling}?",
    "Because {thing} is gone, and {place} is empty.",
    "Then I shall go alone.",
    "Wait for me! I am coming.",
    "Yes. Yes, of course.",
    "Is it true that {name} has left for {place}?",
    "The river is high {time}; take care on the bridge.",
]
STAGE = ["[Enter {name}.]", "[Exit {name}.]", "[{name} sits down.]", "[A bell rings.]",
         "[{name} opens the window.]", "[Rain on the roof.]"]


def _line(rng: random.Random, speaker: str) -> str:
    others = [s.title() for s in SPEAKERS if s != speaker and not s.startswith(("THE", "A "))]
    feeling, feeling2 = rng.sample(FEELINGS, 2)
    time_, time2 = rng.sample(TIMES, 2)
    return rng.choice(LINES).format(thing=rng.choice(THINGS), place=rng.choice(PLACES),
                                    time=time_, time2=time2, feeling=feeling, feeling2=feeling2,
                                    name=rng.choice(others))


def play(size: int, seed: int) -> str:
    """Scenes of a play in the play-script layout (NAME:, the line, a blank line), about
    `size` characters long."""
    rng = random.Random(seed)
    parts, length, scene = ["THE HARBOUR TOWN\nA play in many short scenes.\n\n"], 0, 0
    while length < size:
        scene += 1
        cast = rng.sample(SPEAKERS, rng.randint(2, 4))
        heading = f"SCENE {scene}. {rng.choice(PLACES).capitalize()}, {rng.choice(TIMES)}.\n\n"
        parts.append(heading)
        length += len(heading)
        for _ in range(rng.randint(6, 14)):
            speaker = rng.choice(cast)
            lines = " ".join(_line(rng, speaker) for _ in range(rng.randint(1, 3)))
            block = f"{speaker}:\n{lines}\n\n"
            if rng.random() < 0.1:
                block += rng.choice(STAGE).format(name=rng.choice(cast).title()) + "\n\n"
            parts.append(block)
            length += len(block)
    return "".join(parts)


def main() -> None:
    """Write the files."""
    train = reviews(1000, seed=1, avoid=set())
    test = reviews(200, seed=2, avoid={t for t, _ in train})
    write_csv(DATA / "reviews" / "train.csv", train)
    write_csv(DATA / "reviews" / "test.csv", test)
    (DATA / "play.txt").write_text(play(250_000, seed=3), encoding="utf-8")


if __name__ == "__main__":
    main()
