//! A bound on how deeply policy text nests, checked before Cedar parses it.
//!
//! Cedar's parser, validator and evaluator recurse once per level of nesting, and a stack
//! overflow aborts the whole process: a 460-byte policy of 200 nested parentheses, reloaded by
//! SIGHUP on a 2 MiB runtime thread, killed the daemon instead of being refused, and
//! `svid-broker policy check` aborted on 700. So the text is
//! scanned first and refused above [`MAX_POLICY_NESTING`] levels.
//!
//! The scan over-estimates and never under-estimates the depth of Cedar's syntax tree:
//! - every open bracket (`(`, `[`, `{`) is a level;
//! - within one bracket, every operator that nests its operands one level deeper counts: member
//!   access `.`, arithmetic, comparisons, `!`, `in`, `has`, `like`, `is`, and `if` (so an
//!   `else if` ladder counts each `if`);
//! - `&&`, `||`, `,` and `;` start a new operand: Cedar keeps their chains flat, so a long
//!   disjunction of short conditions stays shallow;
//! - a closed bracket adds its own depth to the operand it sits in.
//!
//! String literals and `//` comments are skipped. Malformed text (an unclosed string, a stray
//! closing bracket) is left for Cedar to report.

/// Deepest nesting accepted, as estimated above; a policy's scope and `when {` take two or three
/// levels, and real conditions a handful more. The costliest construct, nested brackets, takes
/// about 10 KiB of stack a level in Cedar's parser in a release build (200 levels overflowed a
/// 2 MiB runtime thread, 100 did not), so 32 levels leave a runtime thread five times what they
/// need. The test `what_the_nesting_bound_lets_through_fits_a_runtime_threads_stack` loads and
/// evaluates the deepest accepted text of each construct on a 2 MiB thread in a debug build,
/// whose frames are larger still (it overflows there at 40).
pub const MAX_POLICY_NESTING: usize = 32;

/// Where the text first nests deeper than [`MAX_POLICY_NESTING`]: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep {
    pub line: usize,
    pub column: usize,
}

/// Operators that nest their operands one level deeper, and keywords that do the same.
const NESTING_PUNCT: &[u8] = b".+-*!<>=";
const NESTING_WORDS: &[&str] = &["in", "has", "like", "is", "if"];

/// One open bracket: the depth at which it opened, the levels its current operand has added,
/// and the most any of its operands added.
struct Frame {
    base: usize,
    run: usize,
    peak: usize,
}

impl Frame {
    fn open(base: usize) -> Self {
        Self {
            base,
            run: 0,
            peak: 0,
        }
    }

    fn deepen(&mut self, to: usize) {
        self.run = to;
        self.peak = self.peak.max(to);
    }
}

/// `Err` with the position of the first point deeper than [`MAX_POLICY_NESTING`].
pub fn check(text: &str) -> Result<(), TooDeep> {
    let bytes = text.as_bytes();
    let mut frames = vec![Frame::open(0)];
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        i += 1;
        let nested = frames.len() > 1;
        let top = frames
            .last_mut()
            .expect("the outermost frame is never popped");
        match b {
            b'"' => i = after_string(bytes, i),
            b'/' if bytes.get(i) == Some(&b'/') => {
                i = bytes[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |n| i + n);
            }
            b'(' | b'[' | b'{' => {
                let base = top.base + top.run + 1;
                if base > MAX_POLICY_NESTING {
                    return Err(position(text, start));
                }
                frames.push(Frame::open(base));
            }
            b')' | b']' | b'}' if nested => {
                let closed = frames.pop().expect("more than one frame");
                let top = frames
                    .last_mut()
                    .expect("the outermost frame is never popped");
                // The bracket's contents are an operand here: what nests above it nests above
                // the deepest of them.
                let reached = closed.base + closed.peak - top.base;
                top.deepen(top.run.max(reached));
            }
            b'&' | b'|' if bytes.get(i) == Some(&b) => {
                i += 1;
                top.run = 0;
            }
            b',' | b';' => top.run = 0,
            _ if NESTING_PUNCT.contains(&b) => {
                // `==`, `<=`, `!=` are one operator; `-1` is one more level, as Cedar parses it.
                if bytes.get(i) == Some(&b'=') {
                    i += 1;
                }
                top.deepen(top.run + 1);
            }
            _ if is_word(b) => {
                while i < bytes.len() && is_word(bytes[i]) {
                    i += 1;
                }
                if NESTING_WORDS.contains(&&text[start..i]) {
                    top.deepen(top.run + 1);
                }
            }
            _ => continue,
        }
        let top = frames.last().expect("the outermost frame is never popped");
        if top.base + top.run > MAX_POLICY_NESTING {
            return Err(position(text, start));
        }
    }
    Ok(())
}

/// The index after the string literal whose opening quote ends before `i`; the end of the
/// text when it is not closed.
fn after_string(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn position(text: &str, offset: usize) -> TooDeep {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |n| offset - n - 1) + 1;
    TooDeep { line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn when(condition: &str) -> String {
        format!("permit (principal, action, resource) when {{ {condition} }};")
    }

    fn parens(n: usize) -> String {
        format!("{}true{}", "(".repeat(n), ")".repeat(n))
    }

    #[test]
    fn brackets_are_refused_one_past_the_bound() {
        // The scope's parentheses and `when {` take two levels before the condition.
        assert_eq!(check(&when(&parens(MAX_POLICY_NESTING - 2))), Ok(()));
        assert!(check(&when(&parens(MAX_POLICY_NESTING - 1))).is_err());
    }

    #[test]
    fn an_operand_before_a_comma_counts_as_deep_as_it_went() {
        let half = MAX_POLICY_NESTING / 2;
        let deep_first = when(&format!("[{}, 1].contains({})", parens(half), parens(half)));
        assert!(check(&deep_first).is_err(), "{deep_first}");
    }

    #[test]
    fn chains_that_nest_count_and_flat_ones_do_not() {
        let dots = |n| when(&format!("principal{} == 1", ".a".repeat(n)));
        assert!(check(&dots(10)).is_ok());
        assert!(check(&dots(MAX_POLICY_NESTING + 1)).is_err());
        let sum = |n: usize| {
            when(&format!(
                "context.ttl_seconds > {}",
                vec!["1"; n].join(" + ")
            ))
        };
        assert!(check(&sum(10)).is_ok());
        assert!(check(&sum(MAX_POLICY_NESTING + 1)).is_err());
        let ifs = |n| {
            when(&format!(
                "{}true{}",
                "if true then ".repeat(n),
                " else false".repeat(n)
            ))
        };
        assert!(check(&ifs(10)).is_ok());
        assert!(check(&ifs(MAX_POLICY_NESTING + 1)).is_err());
        // A thousand alternatives, each a few levels deep: flat in Cedar, accepted here.
        let any: Vec<String> = (0..1000)
            .map(|i| format!("principal.selectors.contains(\"unix:uid:{i}\")"))
            .collect();
        assert!(check(&when(&any.join(" || "))).is_ok());
        let set: Vec<String> = (0..5000).map(|i| format!("\"s{i}\"")).collect();
        assert!(check(&when(&format!(
            "context.scopes.containsAny([{}])",
            set.join(",")
        )))
        .is_ok());
    }

    #[test]
    fn a_bracket_adds_its_depth_to_the_chain_it_sits_in() {
        // Parentheses then member accesses: the accesses nest above all of the parentheses.
        let half = MAX_POLICY_NESTING / 2;
        let text = when(&format!(
            "{}principal{}.a{}",
            "(".repeat(half),
            ")".repeat(half),
            ".a".repeat(half)
        ));
        assert!(check(&text).is_err(), "{text}");
    }

    #[test]
    fn strings_and_comments_do_not_nest() {
        let brackets = "(".repeat(1000);
        let text = format!(
            "// {brackets}\npermit (principal, action, resource) when {{ context.purpose == \"{brackets} \\\" {brackets}\" }};"
        );
        assert_eq!(check(&text), Ok(()));
    }

    #[test]
    fn the_position_is_where_the_bound_was_crossed() {
        let text = format!("// first line\n{}", when(&parens(200)));
        let e = check(&text).unwrap_err();
        assert_eq!(e.line, 2);
        let line = text.lines().nth(1).unwrap();
        let open = line.find("((").unwrap();
        // The bracket that crossed it: the condition's first `(` is level 3.
        assert_eq!(e.column, open + (MAX_POLICY_NESTING - 2) + 1);
    }

    #[test]
    fn malformed_text_is_left_to_cedar() {
        for text in [
            "))))]]]}}}",
            "\"unclosed",
            "(((",
            "permit (principal, action, resource) when { \"",
        ] {
            assert_eq!(check(text), Ok(()), "{text}");
        }
    }
}
