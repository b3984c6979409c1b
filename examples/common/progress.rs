//! A one-line progress bar on stderr.

use std::io::{IsTerminal, Write};

/// Redraws `label [#####.....] i/n  loss x` in place; `finish` ends the line.
pub fn bar(label: &str, i: usize, n: usize, loss: f32) {
    const WIDTH: usize = 30;
    let mut err = std::io::stderr();
    // Redrawing in place only makes sense on a terminal; logs get the summary line only.
    if !err.is_terminal() {
        if i == n {
            let _ = write!(err, "{label} {n} batches  last loss {loss:.4}");
        }
        return;
    }
    let filled = (i * WIDTH).checked_div(n).unwrap_or(WIDTH);
    let _ = write!(
        err,
        "\r{label} [{}{}] {i:>3}/{n}  loss {loss:.4}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    );
    let _ = err.flush();
}

/// Ends the bar's line with a summary.
pub fn finish(summary: &str) {
    let _ = writeln!(std::io::stderr(), "  {summary}");
}
