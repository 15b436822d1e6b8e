//! `report.html` of a demo run: loss curves (inline SVG), the few-shot table, and example
//! prompts with their images and the model's answers. One self-contained file, no scripts.
use crate::eval::{EvalResults, Row};
use crate::stages::flamingo::Setup;
use std::fmt::Write;

/// Standard base64 (RFC 4648) of `bytes`, for data URIs.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            s.push(if i <= c.len() { A[(n >> shift) as usize & 63] as char } else { '=' });
        }
    }
    s
}

/// A `[3, s, s]` image in [0, 1] as a PNG data URI, scaled up `scale`× (nearest neighbour).
pub fn png_data_uri(img: &[f32], s: usize, scale: usize) -> String {
    let big = s * scale;
    let mut px = image::RgbImage::new(big as u32, big as u32);
    for y in 0..big {
        for x in 0..big {
            let at = |c: usize| (img[(c * s + y / scale) * s + x / scale].clamp(0.0, 1.0) * 255.0).round() as u8;
            px.put_pixel(x as u32, y as u32, image::Rgb([at(0), at(1), at(2)]));
        }
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    match px.write_to(&mut buf, image::ImageFormat::Png) {
        Ok(()) => format!("data:image/png;base64,{}", base64(buf.get_ref())),
        Err(_) => String::new(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG line chart of named series of (x, y) points.
pub fn svg_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, pad) = (560.0, 260.0, 40.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return String::new();
    }
    y0 = y0.min(0.0);
    let sx = |x: f64| pad + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0).max(1e-9) * (h - 2.0 * pad);
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    let mut s = format!("<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg' style='background:#fff;border:1px solid #ccc'>");
    let _ = write!(s, "<text x='{pad}' y='20' font-size='13'>{}</text>", esc(title));
    let _ = write!(s, "<line x1='{pad}' y1='{}' x2='{}' y2='{}' stroke='#888'/>", h - pad, w - pad, h - pad);
    let _ = write!(s, "<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{}' stroke='#888'/>", h - pad);
    let _ = write!(
        s,
        "<text x='{pad}' y='{}' font-size='11'>{x0:.0}</text><text x='{}' y='{}' font-size='11' text-anchor='end'>{x1:.0}</text>",
        h - pad + 14.0,
        w - pad,
        h - pad + 14.0
    );
    let _ = write!(
        s,
        "<text x='{}' y='{}' font-size='11' text-anchor='end'>{y1:.2}</text><text x='{}' y='{}' font-size='11' text-anchor='end'>{y0:.2}</text>",
        pad - 4.0,
        pad + 4.0,
        pad - 4.0,
        h - pad
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let c = colours[i % colours.len()];
        let line: Vec<String> = p.iter().filter(|(_, y)| y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(s, "<polyline fill='none' stroke='{c}' stroke-width='1.5' points='{}'/>", line.join(" "));
        let _ = write!(s, "<text x='{}' y='{}' font-size='11' fill='{c}'>{}</text>", w - pad - 150.0, pad + 14.0 * i as f64, esc(name));
    }
    s + "</svg>"
}

/// Series `key` of a metrics.jsonl text, against `step`.
pub fn series(metrics: &str, key: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?)))
        .collect()
}

fn table_html(rows: &[Row]) -> String {
    let (shots, keys) = crate::eval::layout(rows);
    let mut s = String::from("<table><tr><th>task</th><th>ways</th>");
    for k in &shots {
        let _ = write!(s, "<th>{k}-shot</th>");
    }
    s += "<th>n</th></tr>";
    for (task, ways) in keys {
        let _ = write!(s, "<tr><td>{}</td><td>{ways}</td>", esc(&task));
        let mut n = 0;
        for k in &shots {
            match rows.iter().find(|r| r.task == task && r.ways == ways && r.shots == *k) {
                Some(r) => {
                    n = r.n;
                    let cider = r.cider.map(|c| format!("<br><small>CIDEr {c:.2}</small>")).unwrap_or_default();
                    let _ = write!(s, "<td style='background:hsl({:.0},70%,85%)'>{:.2}{cider}</td>", 120.0 * r.accuracy, r.accuracy);
                }
                None => s += "<td>–</td>",
            }
        }
        let _ = write!(s, "<td>{n}</td></tr>");
    }
    s + "</table>"
}

/// Everything the report shows.
pub struct ReportInput<'a> {
    pub title: String,
    pub summary: String,
    pub stages: &'a [(String, f64)],
    /// (label, metrics.jsonl text) of each training run shown.
    pub runs: Vec<(String, String)>,
    pub results: &'a EvalResults,
    pub ablation: Option<&'a EvalResults>,
    pub setup: &'a Setup,
}

/// The HTML text.
pub fn html(r: &ReportInput) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>{0}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}.ex{{border:1px solid #ddd;padding:6px;margin:6px 0}}.ex img{{margin:2px;image-rendering:pixelated}}code{{background:#f4f4f4}}</style></head><body><h1>{0}</h1><p>{1}</p>",
        esc(&r.title),
        esc(&r.summary)
    );
    s += "<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th></tr>";
    for (name, secs) in r.stages {
        let _ = write!(s, "<tr><td>{}</td><td>{secs:.1}</td></tr>", esc(name));
    }
    s += "</table><h2>Training loss</h2>";
    for (label, m) in &r.runs {
        let keys = ["loss", "loss_interleaved", "loss_pairs", "loss_video"];
        let losses: Vec<(String, Vec<(f64, f64)>)> = keys.iter().map(|k| (k.to_string(), series(m, k))).filter(|(_, p)| !p.is_empty()).collect();
        s += &svg_chart(&format!("{label}: loss against step"), &losses);
        let probes: Vec<(String, Vec<(f64, f64)>)> = ["colour", "shape"]
            .iter()
            .flat_map(|a| [2, 4].map(|k| (format!("{a} {k}-shot"), series(m, &format!("probe_binding_heldout_{a}_{k}shot")))))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        if !probes.is_empty() {
            s += &svg_chart(&format!("{label}: held-out 2-way binding accuracy during training (50 episodes)"), &probes);
        }
        let gates: Vec<(String, Vec<(f64, f64)>)> =
            (0..8).map(|i| (format!("tanh(attn gate {i})"), series(m, &format!("tanh_{i}")))).filter(|(_, p)| !p.is_empty()).collect();
        if !gates.is_empty() {
            s += &svg_chart(&format!("{label}: tanh of the cross-attention gates"), &gates);
        }
    }
    s += "<h2>Few-shot results (held-out words, unseen images)</h2>";
    s += &table_html(&r.results.rows);
    if let Some(a) = r.ablation {
        s += "<h2>Ablation: round-robin over datasets at equal compute</h2>";
        s += &table_html(&a.rows);
    }
    s += "<h2>Examples</h2>";
    for e in &r.results.examples {
        let _ = write!(s, "<div class='ex'><b>{}</b>, {} shots: ", esc(&e.task), e.shots);
        let size = r.setup.image_size;
        for &m in &e.media {
            let img = if e.video { &r.setup.eval_clips.images[m * r.setup.eval_clips.frames] } else { &r.setup.eval_images.images[m] };
            let _ = write!(s, "<img src='{}' width='{}'>", png_data_uri(img, size, 2), size * 2);
        }
        let ok = if e.answer == e.prediction { "✓" } else { "✗" };
        let _ = write!(s, "<br><code>{}</code><br>expected <b>{}</b>, model <b>{}</b> {ok}</div>", esc(&e.prompt), esc(&e.answer), esc(&e.prediction));
    }
    s + "</body></html>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
