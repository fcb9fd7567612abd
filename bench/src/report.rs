//! The closing markdown table: figures, ratio, target, met or not.

#[derive(Clone, Copy)]
pub enum Better {
    Higher,
    Lower,
}

/// What a row must reach; ratios are portcullis / distribution, absolute
/// targets are in the row's unit and apply to portcullis.
#[derive(Clone, Copy)]
pub enum Target {
    None,
    RatioMin(f64),
    RatioMax(f64),
    AbsMax(f64),
    AbsBelow(f64),
    /// Portcullis against another portcullis figure of the same unit (`of`
    /// names it): portcullis / `base` ≥ `min`.
    BaseRatioMin {
        base: Option<f64>,
        min: f64,
        of: &'static str,
    },
}

pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    pub p: Option<f64>,
    pub d: Option<f64>,
    pub target: Target,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.p, self.d) {
            (Some(p), Some(d)) if d != 0.0 => Some(p / d),
            _ => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => "—".into(),
            Target::RatioMin(x) => format!("≥ {x}×"),
            Target::RatioMax(x) => format!("≤ {x}×"),
            Target::AbsMax(x) => format!("≤ {x} {}", self.unit),
            Target::AbsBelow(x) => format!("< {x} {}", self.unit),
            Target::BaseRatioMin { base, min, of } => match (self.p, base) {
                (Some(p), Some(b)) if b != 0.0 => {
                    format!("≥ {min}× {of} ({}: {:.2}×)", fmt(Some(b), self.unit), p / b)
                }
                _ => format!("≥ {min}× {of}"),
            },
        }
    }

    fn status(&self) -> &'static str {
        let ok = match self.target {
            Target::None => return "",
            Target::RatioMin(x) => self.ratio().map(|r| r >= x),
            Target::RatioMax(x) => self.ratio().map(|r| r <= x),
            Target::AbsMax(x) => self.p.map(|p| p <= x),
            Target::AbsBelow(x) => self.p.map(|p| p < x),
            Target::BaseRatioMin { base, min, .. } => match (self.p, base) {
                (Some(p), Some(b)) if b != 0.0 => Some(p / b >= min),
                _ => None,
            },
        };
        match ok {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        }
    }
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "—".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1} {unit}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2} {unit}"),
        Some(v) => format!("{v:.3} {unit}"),
    }
}

enum Line {
    Section(String),
    Row(Row),
}

#[derive(Default)]
pub struct Report {
    lines: Vec<Line>,
    notes: Vec<String>,
    /// Said after "Targets met: M of N" (the S3 mode's targets are the
    /// filesystem mode's, for reference).
    pub targets_caption: Option<String>,
}

impl Report {
    pub fn section(&mut self, name: &str) {
        self.lines.push(Line::Section(name.into()));
    }

    pub fn add(&mut self, row: Row) {
        self.lines.push(Line::Row(row));
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub fn print(&self) {
        println!("## Results\n");
        println!("| workload | portcullis | distribution | ratio (P/D) | target | status |");
        println!("|---|---:|---:|---:|---|---|");
        for line in &self.lines {
            match line {
                Line::Section(s) => println!("| **{s}** | | | | | |"),
                Line::Row(r) => {
                    let better = match r.better {
                        Better::Higher => "higher is better",
                        Better::Lower => "lower is better",
                    };
                    let ratio = r
                        .ratio()
                        .map(|x| format!("{x:.2}× ({better})"))
                        .unwrap_or_else(|| format!("— ({better})"));
                    println!(
                        "| {} | {} | {} | {} | {} | {} |",
                        r.name,
                        fmt(r.p, r.unit),
                        fmt(r.d, r.unit),
                        ratio,
                        r.target_text(),
                        r.status()
                    );
                }
            }
        }
        let rows: Vec<&Row> = self
            .lines
            .iter()
            .filter_map(|l| match l {
                Line::Row(r) if !matches!(r.target, Target::None) => Some(r),
                _ => None,
            })
            .collect();
        let met = rows.iter().filter(|r| r.status() == "met").count();
        match &self.targets_caption {
            None => println!("\nTargets met: {met} of {}", rows.len()),
            Some(c) => println!("\nTargets met: {met} of {} ({c})", rows.len()),
        }
        for n in &self.notes {
            println!("- {n}");
        }
    }
}
