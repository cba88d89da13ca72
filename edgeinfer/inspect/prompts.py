"""The built-in pool of ordinary-looking chat requests that identifying inputs are chosen from.

IDs must look like the traffic they hide in: short, plausible user requests (questions, small coding tasks,
translations, definitions), nothing a server could single out by its form. The pool is built from a few
hand-written requests and templates filled with everyday subjects; ``prompt_pool()`` gives the same list in
the same order every time, so an ID file can be regenerated.
"""

from __future__ import annotations

_HANDWRITTEN = (
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 12?",
    "Name the largest planet in our solar system.",
    "What does HTTP stand for?",
    "What is the chemical symbol for gold?",
    "How many continents are there?",
    "What is the square root of 144?",
    "Which ocean is the largest?",
    "What language is spoken in Brazil?",
    "How many legs does a spider have?",
    "What is the freezing point of water in Fahrenheit?",
    "Who painted the Mona Lisa?",
    "What is the speed of light in a vacuum?",
    "What does CPU stand for?",
    "How many bytes are in a kilobyte?",
    "What is the opposite of 'ancient'?",
    "Which planet is known as the Red Planet?",
    "What is the main ingredient of guacamole?",
    "How many minutes are in a day?",
    "What is the tallest mountain in the world?",
    "What does JSON stand for?",
    "What is the past tense of 'run'?",
    "Write a haiku about autumn leaves.",
    "Give me a short tip for better sleep.",
    "Suggest a name for a grey cat.",
    "What is a prime number?",
    "Is a tomato a fruit or a vegetable?",
    "What year did the Second World War end?",
    "How do I exit vim?",
    "What is the difference between a list and a tuple in Python?",
    "Write a SQL query that counts the rows of a table named users.",
    "What is the time complexity of binary search?",
    "How do I reverse a string in Python?",
    "Write a bash command that lists all files larger than 100MB.",
    "What is the default port of HTTPS?",
    "How do I create a new branch in git?",
    "What does the acronym RAM mean?",
)

_COUNTRIES = (
    "Germany", "Japan", "Italy", "Spain", "Canada", "Australia", "Egypt", "Kenya", "Norway", "Peru",
    "Portugal", "Greece", "Sweden", "Poland", "Mexico", "Argentina", "Thailand", "Vietnam", "Ireland",
    "Chile",
)  # fmt: skip
_CODE_TASKS = (
    "returns the factorial of n",
    "checks whether a number is prime",
    "reverses a list",
    "counts the vowels in a string",
    "returns the largest element of a list",
    "computes the nth Fibonacci number",
    "removes duplicates from a list",
    "checks whether a string is a palindrome",
    "converts Celsius to Fahrenheit",
    "sums the even numbers in a list",
    "returns the average of a list of numbers",
    "merges two sorted lists",
    "flattens a nested list",
    "counts the words in a sentence",
    "capitalizes the first letter of every word",
    "returns the greatest common divisor of two integers",
    "checks whether a year is a leap year",
    "sorts a dictionary by its values",
    "reads a file and returns its lines",
    "finds the index of an item in a list",
)
_LANGUAGES = ("Python", "JavaScript", "Go", "Rust", "Java", "C")
_CONCEPTS = (
    "recursion", "a hash table", "an API", "a compiler", "machine learning", "a database index",
    "encryption", "a linked list", "photosynthesis", "inflation", "gravity", "a virus", "an algorithm",
    "a neural network", "cloud computing", "a firewall", "DNS", "version control", "a mutex", "caching",
)  # fmt: skip
_WORDS = (
    "happy", "quick", "big", "smart", "difficult", "beautiful", "angry", "tired", "important", "small",
    "cold", "brave", "strange", "calm", "bright",
)  # fmt: skip
_PHRASES = ("Good morning", "Thank you very much", "Where is the train station?", "I love reading books")
_TARGETS = ("French", "Spanish", "German", "Italian")
_CONVERSIONS = (
    "5 kilometers to miles", "100 Fahrenheit to Celsius", "3 hours to seconds", "2 pounds to kilograms",
    "10 inches to centimeters", "1 gigabyte to megabytes", "250 grams to ounces", "60 miles per hour to "
    "kilometers per hour",
)  # fmt: skip
_ANIMALS = (
    "elephant",
    "penguin",
    "dolphin",
    "owl",
    "kangaroo",
    "octopus",
    "bee",
    "giraffe",
    "wolf",
    "turtle",
)


def prompt_pool() -> list[str]:
    """About 200 distinct user requests, in a fixed order."""
    pool = list(_HANDWRITTEN)
    pool += [f"What is the capital of {c}?" for c in _COUNTRIES]
    pool += [f"Write a {lang} function that {task}." for task in _CODE_TASKS for lang in _LANGUAGES[:2]]
    pool += [f"Explain {c} in one sentence." for c in _CONCEPTS]
    pool += [f"What is {c}?" for c in _CONCEPTS]
    pool += [f"Give me a synonym for '{w}'." for w in _WORDS]
    pool += [f"What is the opposite of '{w}'?" for w in _WORDS]
    pool += [f"Translate '{p}' into {t}." for p in _PHRASES for t in _TARGETS]
    pool += [f"Convert {c}." for c in _CONVERSIONS]
    pool += [f"Tell me one fact about the {a}." for a in _ANIMALS]
    pool += [f"What do {a}s eat?" for a in _ANIMALS]
    seen: set[str] = set()
    return [p for p in pool if not (p in seen or seen.add(p))]
