//! Output for people (aligned tables) and for scripts (`-o json`).

use anyhow::Result;
use serde::Serialize;

/// How a command prints its result.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn print_json<T: Serialize>(&self, v: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

/// A plain-text table with a header row and columns padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let mut s = String::new();
        for r in std::iter::once(&self.header).chain(self.rows.iter()) {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            s.push_str(line.join("  ").trim_end());
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["PEER", "STATE"]);
        t.row(vec!["10.0.0.1".into(), "Established".into()]);
        t.row(vec!["fd00::1".into(), "Active".into()]);
        assert_eq!(
            t.render(),
            "PEER      STATE\n10.0.0.1  Established\nfd00::1   Active\n"
        );
    }
}
