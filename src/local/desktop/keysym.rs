//! Key names and characters to X keysyms, resolved in the backend (the helper only ever
//! receives numbers).
//!
//! A key name is, in this order: an X keysym name (`Return`, `F5`, `Page_Up`, `a`, `A`,
//! `EuroSign`, `XF86AudioMute`, every name of `keysymdef.h` and `XF86keysym.h`); one of the
//! friendly names the SDKs send (`ctrl`, `alt`, `shift`, `super`, `enter`, `esc`, `pageup`,
//! ..., case-insensitive); a keysym name in another case when only one name matches
//! (`f5`, `backspace`); `0x…` (a keysym value); `U+XXXX` (a Unicode character); or a single
//! character.

use std::collections::HashMap;
use std::sync::OnceLock;

/// `keysymdef.h` and `XF86keysym.h` as `name hex` lines (see the file's header).
const TABLE: &str = include_str!("keysyms.txt");

/// `Return`, typed for a newline.
const RETURN: u32 = 0xff0d;
/// `Tab`.
const TAB: u32 = 0xff09;
/// Unicode keysyms are this plus the code point.
const UNICODE: u32 = 0x0100_0000;

struct Tables {
    exact: HashMap<&'static str, u32>,
    /// Lower-cased names; `None` where two names differ only in case.
    folded: HashMap<String, Option<u32>>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut exact = HashMap::new();
        let mut folded: HashMap<String, Option<u32>> = HashMap::new();
        for line in TABLE.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, hex)) = line.split_once(' ') else {
                continue;
            };
            let Ok(v) = u32::from_str_radix(hex, 16) else {
                continue;
            };
            exact.insert(name, v);
            folded
                .entry(name.to_ascii_lowercase())
                .and_modify(|e| {
                    if *e != Some(v) {
                        *e = None;
                    }
                })
                .or_insert(Some(v));
        }
        Tables { exact, folded }
    })
}

/// The friendly names of protocol.md §4.6 (and a few more), lower-case.
fn friendly(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "ctrl" | "control" => 0xffe3,               // Control_L
        "alt" | "option" => 0xffe9,                 // Alt_L
        "shift" => 0xffe1,                          // Shift_L
        "super" | "cmd" | "win" | "meta" => 0xffeb, // Super_L
        "enter" | "return" => RETURN,
        "esc" | "escape" => 0xff1b,
        "tab" => TAB,
        "space" => 0x20,
        "backspace" => 0xff08,
        "delete" | "del" => 0xffff,
        "insert" | "ins" => 0xff63,
        "up" => 0xff52,
        "down" => 0xff54,
        "left" => 0xff51,
        "right" => 0xff53,
        "home" => 0xff50,
        "end" => 0xff57,
        "pageup" | "pgup" => 0xff55,
        "pagedown" | "pgdn" => 0xff56,
        _ => return None,
    })
}

/// The keysym typing `c` produces: Latin-1 characters are their own keysyms, newline is
/// `Return`, tab is `Tab`, other characters their Unicode keysym. Control characters cannot
/// be typed.
pub(crate) fn of_char(c: char) -> Result<u32, String> {
    let cp = u32::from(c);
    match c {
        '\n' | '\r' => Ok(RETURN),
        '\t' => Ok(TAB),
        _ if c.is_control() => Err(format!(
            "text contains the control character U+{cp:04X}, which cannot be typed"
        )),
        _ if (0x20..=0x7e).contains(&cp) || (0xa0..=0xff).contains(&cp) => Ok(cp),
        _ => Ok(UNICODE + cp),
    }
}

/// The keysym a key name stands for (see the module docs).
pub(crate) fn of_name(name: &str) -> Result<u32, String> {
    let t = tables();
    if let Some(v) = t.exact.get(name) {
        return Ok(*v);
    }
    if let Some(v) = friendly(name) {
        return Ok(v);
    }
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return of_char(c);
    }
    if let Some(Some(v)) = t.folded.get(&name.to_ascii_lowercase()) {
        return Ok(*v);
    }
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    if let Some(v) = name
        .strip_prefix("0x")
        .or_else(|| name.strip_prefix("0X"))
        .and_then(hex)
    {
        return Ok(v);
    }
    if let Some(c) = name
        .strip_prefix("U+")
        .or_else(|| name.strip_prefix('U'))
        .and_then(hex)
        .and_then(char::from_u32)
    {
        return of_char(c);
    }
    Err(format!("unknown key {name:?}: not an X keysym name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_friendly_names_and_characters() {
        assert_eq!(of_name("Return"), Ok(0xff0d));
        assert_eq!(of_name("enter"), Ok(0xff0d));
        assert_eq!(of_name("ctrl"), Ok(0xffe3));
        assert_eq!(of_name("Control_L"), Ok(0xffe3));
        assert_eq!(of_name("a"), Ok(0x61));
        assert_eq!(of_name("A"), Ok(0x41));
        assert_eq!(of_name("F5"), Ok(0xffc2));
        assert_eq!(of_name("f5"), Ok(0xffc2));
        assert_eq!(of_name("Page_Up"), Ok(0xff55));
        assert_eq!(of_name("BackSpace"), Ok(0xff08));
        assert_eq!(of_name("backspace"), Ok(0xff08));
        assert_eq!(of_name("EuroSign"), Ok(0x20ac));
        assert_eq!(of_name("XF86AudioMute"), Ok(0x1008_ff12));
        assert_eq!(of_name("0x20ac"), Ok(0x20ac));
        assert_eq!(of_name("U+263A"), Ok(0x0100_263a));
        assert_eq!(of_name("é"), Ok(0xe9));
        assert_eq!(of_name("€"), Ok(0x0100_20ac));
        // names that differ only in case are not guessed
        assert_eq!(of_name("aacute"), Ok(0xe1));
        assert_eq!(of_name("Aacute"), Ok(0xc1));
        assert!(of_name("AACUTE").is_err());
        assert!(of_name("no_such_key").unwrap_err().contains("no_such_key"));
        assert!(of_name("").is_err());
    }

    #[test]
    fn characters() {
        assert_eq!(of_char('x'), Ok(0x78));
        assert_eq!(of_char('\n'), Ok(0xff0d));
        assert_eq!(of_char('\t'), Ok(0xff09));
        assert_eq!(of_char('ß'), Ok(0xdf));
        assert_eq!(of_char('ж'), Ok(0x0100_0436));
        assert!(of_char('\u{7}').unwrap_err().contains("U+0007"));
    }
}
