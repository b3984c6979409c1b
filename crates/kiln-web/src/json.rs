//! A small JSON writer for what the page is handed (device descriptions, epochs, op results).

use std::fmt::Write;

/// A JSON object being written: `Json::new().str("k", "v").num("n", 1.0).finish()`.
#[derive(Default)]
pub struct Json {
    out: String,
}

impl Json {
    /// An empty object.
    pub fn new() -> Json {
        Json::default()
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        quote(&mut self.out, key);
        self.out.push(':');
    }

    /// A string member.
    pub fn str(mut self, key: &str, value: &str) -> Json {
        self.key(key);
        quote(&mut self.out, value);
        self
    }

    /// A number member (non-finite numbers are written as null).
    pub fn num(mut self, key: &str, value: f64) -> Json {
        self.key(key);
        number(&mut self.out, value);
        self
    }

    /// A boolean member.
    pub fn bool(mut self, key: &str, value: bool) -> Json {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    /// An array of numbers.
    pub fn nums(self, key: &str, values: impl IntoIterator<Item = f64>) -> Json {
        self.array(key, values, number)
    }

    /// An array of strings.
    pub fn strs<'a>(self, key: &str, values: impl IntoIterator<Item = &'a str>) -> Json {
        self.array(key, values, quote)
    }

    fn array<T>(
        mut self,
        key: &str,
        values: impl IntoIterator<Item = T>,
        write: fn(&mut String, T),
    ) -> Json {
        self.key(key);
        self.out.push('[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            write(&mut self.out, v);
        }
        self.out.push(']');
        self
    }

    /// A member that is already JSON (an object or array written elsewhere).
    pub fn raw(mut self, key: &str, json: &str) -> Json {
        self.key(key);
        self.out.push_str(json);
        self
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn number(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn writes_escaped_members() {
        let j = Json::new()
            .str("a", "say \"hi\"\n\u{1}")
            .num("n", 0.5)
            .num("inf", f64::INFINITY)
            .bool("ok", true)
            .nums("v", [1.0, 2.5])
            .strs("s", ["x"])
            .raw("o", "{}")
            .finish();
        assert_eq!(
            j,
            r#"{"a":"say \"hi\"\n\u0001","n":0.5,"inf":null,"ok":true,"v":[1,2.5],"s":["x"],"o":{}}"#
        );
        assert_eq!(Json::new().finish(), "{}");
    }
}
