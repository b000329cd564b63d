//! The built-in corpus: procedurally generated English-like text that needs no
//! download, for demos and CI.
//!
//! The text has structure a tiny byte-level model can learn in minutes, in
//! stages that show up in samples: spelling of a small vocabulary, then word
//! order, then consistent names and pronouns inside a story, then facts and
//! arithmetic. It mixes three kinds of paragraph:
//! - short stories from a small grammar: a character with a name and a
//!   pronoun, a friend, places and objects that are mentioned again later;
//! - simple facts from fixed tables ("A cow says moo.", "After Monday comes
//!   Tuesday."), always true and consistent;
//! - arithmetic lines (`17 + 25 = 42.`), always correct.
//!
//! Generation is seeded (train and validation use different seeds, so the
//! validation text is new sentences from the same distribution) and takes a
//! few tens of milliseconds.

use super::dataset::Dataset;
use crate::util::rng::Rng;
use super::tokenizer::Tokenizer;

/// Seeds and sizes of the built-in splits. Changing any of them changes the
/// corpus and therefore every loss curve recorded against it.
pub const TRAIN_SEED: u64 = 0x00C0_FFEE;
pub const VAL_SEED: u64 = 0x0000_BEEF;
pub const TRAIN_BYTES: usize = 3_000_000;
pub const VAL_BYTES: usize = 150_000;

/// The built-in dataset with the byte tokenizer (vocab 256).
pub fn dataset() -> Dataset {
    let to_tokens = |s: String| s.into_bytes().into_iter().map(u32::from).collect();
    Dataset::from_tokens(
        Tokenizer::Bytes,
        to_tokens(generate(TRAIN_SEED, TRAIN_BYTES)),
        to_tokens(generate(VAL_SEED, VAL_BYTES)),
        "builtin",
    )
}

/// Generates at least `min_bytes` of text (whole paragraphs; ASCII only).
pub fn generate(seed: u64, min_bytes: usize) -> String {
    let mut g = Gen {
        rng: Rng::new(seed),
        out: String::with_capacity(min_bytes + 4096),
    };
    while g.out.len() < min_bytes {
        g.paragraph();
        g.out.push_str("\n\n");
    }
    g.out
}

#[derive(Clone, Copy)]
struct Person {
    name: &'static str,
    /// (subject, object, possessive): "she", "her", "her".
    pro: (&'static str, &'static str, &'static str),
}

const SHE: (&str, &str, &str) = ("she", "her", "her");
const HE: (&str, &str, &str) = ("he", "him", "his");

const PEOPLE: &[Person] = &[
    Person {
        name: "Mia",
        pro: SHE,
    },
    Person {
        name: "Tom",
        pro: HE,
    },
    Person {
        name: "Lily",
        pro: SHE,
    },
    Person {
        name: "Ben",
        pro: HE,
    },
    Person {
        name: "Anna",
        pro: SHE,
    },
    Person {
        name: "Sam",
        pro: HE,
    },
    Person {
        name: "Rosa",
        pro: SHE,
    },
    Person {
        name: "Max",
        pro: HE,
    },
    Person {
        name: "Ella",
        pro: SHE,
    },
    Person {
        name: "Leo",
        pro: HE,
    },
    Person {
        name: "Nora",
        pro: SHE,
    },
    Person {
        name: "Jack",
        pro: HE,
    },
    Person {
        name: "Zoe",
        pro: SHE,
    },
    Person {
        name: "Finn",
        pro: HE,
    },
    Person {
        name: "Ruby",
        pro: SHE,
    },
    Person {
        name: "Omar",
        pro: HE,
    },
];

const KINDS_SHE: &[&str] = &["girl", "cat", "rabbit", "mouse", "fox"];
const KINDS_HE: &[&str] = &["boy", "dog", "bear", "frog", "fox"];
const TRAITS: &[&str] = &[
    "little", "kind", "brave", "happy", "clever", "shy", "curious", "funny",
];
const PLACES: &[&str] = &[
    "the park",
    "the forest",
    "the beach",
    "the garden",
    "the market",
    "the library",
    "the old mill",
    "the river",
    "the hill",
    "the school",
    "the farm",
    "the village",
];
const OBJECTS: &[&str] = &[
    "ball", "kite", "key", "book", "box", "hat", "shell", "stone", "map", "cup", "bell", "flower",
    "coin", "boat", "drum",
];
const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "shiny", "small", "big", "old", "orange",
];
const FEELINGS: &[&str] = &["happy", "excited", "surprised", "proud", "curious"];
const WEATHER: &[&str] = &["sunny", "rainy", "windy", "cold", "warm", "quiet"];
const OPENINGS: &[&str] = &[
    "One day",
    "One morning",
    "One evening",
    "Last summer",
    "On Sunday",
];
const HIDING: &[&str] = &[
    "under the trees",
    "behind the rocks",
    "near the water",
    "in the tall grass",
    "under a bench",
    "inside an old box",
];
const SEEN: &[&str] = &[
    "a big dog",
    "two ducks",
    "a red bird",
    "a tall tree",
    "a small boat",
    "an old man",
    "three cows",
    "a yellow bus",
    "a little frog",
];

/// (animal, sound, home, legs)
const ANIMALS: &[(&str, &str, &str, &str)] = &[
    ("cat", "meow", "a house", "four"),
    ("dog", "woof", "a house", "four"),
    ("cow", "moo", "a farm", "four"),
    ("duck", "quack", "a pond", "two"),
    ("sheep", "baa", "a field", "four"),
    ("frog", "croak", "a pond", "four"),
    ("owl", "hoot", "a tree", "two"),
    ("hen", "cluck", "a farm", "two"),
    ("horse", "neigh", "a stable", "four"),
    ("lion", "roar", "the grassland", "four"),
];
const COLOR_FACTS: &[(&str, &str)] = &[
    ("The sky", "blue"),
    ("Grass", "green"),
    ("Snow", "white"),
    ("The sun", "yellow"),
    ("A banana", "yellow"),
    ("An apple", "red"),
    ("Coal", "black"),
    ("A carrot", "orange"),
    ("The sea", "blue"),
    ("A leaf", "green"),
];
const DAYS: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const NUMBER_WORDS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
];

struct Gen {
    rng: Rng,
    out: String,
}

impl Gen {
    fn paragraph(&mut self) {
        match self.rng.below(10) {
            0..=5 => self.story(),
            6..=7 => self.facts(),
            _ => self.arithmetic(),
        }
    }

    fn pick(&mut self, items: &[&'static str]) -> &'static str {
        items[self.rng.below(items.len())]
    }

    /// Two different characters: the hero and a friend.
    fn cast(&mut self) -> (Person, Person) {
        let a = *self.rng.pick(PEOPLE);
        let mut b = *self.rng.pick(PEOPLE);
        while b.name == a.name {
            b = *self.rng.pick(PEOPLE);
        }
        (a, b)
    }

    fn say(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn story(&mut self) {
        let (hero, friend) = self.cast();
        self.introduce(hero);
        match self.rng.below(4) {
            0 => self.plot_found(hero, friend),
            1 => self.plot_lost(hero, friend),
            2 => self.plot_trip(hero, friend),
            _ => self.plot_help(hero, friend),
        }
    }

    fn introduce(&mut self, p: Person) {
        let kinds = if p.pro.0 == "she" {
            KINDS_SHE
        } else {
            KINDS_HE
        };
        let (t, k, place) = (self.pick(TRAITS), self.pick(kinds), self.pick(PLACES));
        let s = format!(
            "Once upon a time, there was a {t} {k} named {}. {} lived near {place}. ",
            p.name,
            cap(p.pro.0)
        );
        self.say(&s);
    }

    fn plot_found(&mut self, p: Person, f: Person) {
        let (open, color, obj) = (self.pick(OPENINGS), self.pick(COLORS), self.pick(OBJECTS));
        let (place, feel) = (self.pick(PLACES), self.pick(FEELINGS));
        let (he, _, _) = p.pro;
        let s = format!(
            "{open}, {} found {} {color} {obj} at {place}. {} was very {feel}. {} showed the \
             {obj} to {}. \"What a nice {obj}!\" said {}. \"Where did you find it?\" \"At \
             {place},\" said {}. They played with the {color} {obj} until the sun went down.",
            p.name,
            article(color),
            cap(he),
            p.name,
            f.name,
            f.name,
            p.name
        );
        self.say(&s);
    }

    fn plot_lost(&mut self, p: Person, f: Person) {
        let (color, obj, place) = (self.pick(COLORS), self.pick(OBJECTS), self.pick(PLACES));
        let (open, hide) = (self.pick(OPENINGS), self.pick(HIDING));
        let (he, him, his) = p.pro;
        let s =
            format!(
            "{} had {} {color} {obj}. {} loved {his} {obj} very much. {open}, {} lost the {obj} \
             at {place}. {} was sad. {} helped {him} look for it. They looked {hide}. At last, \
             {} found the {color} {obj}. {} was happy again. \"Thank you, {}!\" {he} said. \
             Who found the {obj}? {} found it.",
            p.name, article(color), cap(he), p.name, cap(he), f.name, f.name, p.name, f.name, f.name
        );
        self.say(&s);
    }

    fn plot_trip(&mut self, p: Person, f: Person) {
        let (weather, place) = (self.pick(WEATHER), self.pick(PLACES));
        let (a, b) = (self.pick(SEEN), self.pick(SEEN));
        let (he, _, his) = p.pro;
        let s = format!(
            "It was a {weather} day. {} and {} went to {place}. They saw {a} and {b}. {} held \
             {his} friend's hand. At the end of the day, they went home. {} said, \"I want to \
             go to {place} again tomorrow.\"",
            p.name,
            f.name,
            p.name,
            cap(he)
        );
        self.say(&s);
    }

    fn plot_help(&mut self, p: Person, f: Person) {
        let (color, obj, place) = (self.pick(COLORS), self.pick(OBJECTS), self.pick(PLACES));
        let (he, _, his) = p.pro;
        let (fhe, _, _) = f.pro;
        let s = format!(
            "{} wanted to carry {his} {color} {obj} to {place}, but it was too heavy. {} sat \
             down and felt sad. Then {} came by. \"I can help you,\" {fhe} said. Together they \
             carried the {obj} to {place}. {} smiled and said, \"Friends help each other.\"",
            p.name,
            cap(he),
            f.name,
            p.name
        );
        self.say(&s);
    }

    /// A few true sentences on one line.
    fn facts(&mut self) {
        let n = 3 + self.rng.below(4);
        for i in 0..n {
            if i > 0 {
                self.out.push(' ');
            }
            let s = self.fact();
            self.say(&s);
        }
    }

    fn fact(&mut self) -> String {
        let (animal, sound, home, legs) = *self.rng.pick(ANIMALS);
        let a = cap(article(animal));
        match self.rng.below(6) {
            0 => format!("{a} {animal} says {sound}."),
            1 => format!("{a} {animal} lives in {home}."),
            2 => format!("{a} {animal} has {legs} legs."),
            3 => {
                let (thing, color) = *self.rng.pick(COLOR_FACTS);
                format!("{thing} is {color}.")
            }
            4 => {
                let d = self.rng.below(DAYS.len());
                format!("After {} comes {}.", DAYS[d], DAYS[(d + 1) % DAYS.len()])
            }
            _ => self.comparison(),
        }
    }

    fn comparison(&mut self) -> String {
        let a = self.rng.below(NUMBER_WORDS.len());
        let mut b = self.rng.below(NUMBER_WORDS.len());
        while b == a {
            b = self.rng.below(NUMBER_WORDS.len());
        }
        let word = if a > b { "more" } else { "less" };
        format!(
            "{} is {word} than {}.",
            cap(NUMBER_WORDS[a]),
            NUMBER_WORDS[b]
        )
    }

    /// Correct equations, one per line.
    fn arithmetic(&mut self) {
        let n = 3 + self.rng.below(4);
        for i in 0..n {
            if i > 0 {
                self.out.push('\n');
            }
            let s = self.equation();
            self.say(&s);
        }
    }

    fn equation(&mut self) -> String {
        match self.rng.below(3) {
            0 => {
                let (a, b) = (self.rng.below(100), self.rng.below(100));
                format!("{a} + {b} = {}.", a + b)
            }
            1 => {
                let (a, b) = (self.rng.below(100), self.rng.below(100));
                let (hi, lo) = (a.max(b), a.min(b));
                format!("{hi} - {lo} = {}.", hi - lo)
            }
            _ => {
                let (a, b) = (self.rng.below(13), self.rng.below(13));
                format!("{a} * {b} = {}.", a * b)
            }
        }
    }
}

/// "a" or "an" for the word that follows.
fn article(next: &str) -> &'static str {
    match next.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

/// Capitalizes the first ASCII letter.
fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}
