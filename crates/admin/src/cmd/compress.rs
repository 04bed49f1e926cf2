//! `jewelshot compress IN OUT`: the upload pipeline on a file, with what it did and how long it
//! took. Needs no database and no async runtime (lean for benchmarks, usable anywhere).

use anyhow::Context;
use serde::Serialize;

use crate::{
    app::{print, Failure, Report},
    cli::CompressArgs,
};

pub fn run(args: &CompressArgs, json: bool) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    let bytes = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let limits = jewelshot_imaging::Limits {
        max_side: args.max_side,
        quality: args.quality,
        max_output_bytes: args.max_bytes,
        ..Default::default()
    };
    let out =
        jewelshot_imaging::compress(&bytes, &limits).map_err(|e| Failure::failed(format!("{} ({})", e, e.code())))?;
    std::fs::write(&args.output, &out.bytes).with_context(|| format!("writing {}", args.output.display()))?;
    let milliseconds = start.elapsed().as_secs_f64() * 1000.0;
    let mut details = serde_json::to_value(&out)?;
    details["bytes"] = serde_json::json!(out.bytes.len());
    details["milliseconds"] = serde_json::json!(milliseconds);
    let text = format!(
        "{} {}x{} {} B -> {} {}x{} {} B ({:.1}%), {}, {:.1} ms",
        args.input.display(),
        out.original_width,
        out.original_height,
        out.original_bytes,
        out.content_type,
        out.width,
        out.height,
        out.bytes.len(),
        100.0 * out.bytes.len() as f64 / out.original_bytes.max(1) as f64,
        match out.quality {
            Some(q) => format!("quality {q}"),
            None => "input kept (metadata stripped)".into(),
        },
        milliseconds
    );
    print(&Compressed { details, text }, json)
}

#[derive(Serialize)]
#[serde(transparent)]
struct Compressed {
    details: serde_json::Value,
    #[serde(skip)]
    text: String,
}

impl Report for Compressed {
    fn text(&self) -> String {
        self.text.clone()
    }
}
