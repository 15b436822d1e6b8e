//! A bad manifest (missing file, corrupt JPEG, malformed line, images without markers) is
//! reported line by line and skipped, and every good record is kept.
use flamingo_trainer::data::manifest::{read_documents, read_pairs};
use flamingo_trainer::world::render::{render, Object};

fn write_png(path: &std::path::Path, seed: u64) {
    let mut rng = flamingo_engine::Rng::new(seed);
    let o = Object::random(&mut rng);
    let px = render(&[o], 16, 0.0, &mut rng);
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        let at = |c: usize| (px[(c * 16 + y as usize) * 16 + x as usize] * 255.0) as u8;
        image::Rgb([at(0), at(1), at(2)])
    });
    img.save(path).unwrap();
}

#[test]
fn bad_records_are_reported_and_good_ones_kept() {
    let dir = std::env::temp_dir().join(format!("flamingo-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_png(&dir.join("a.png"), 1);
    write_png(&dir.join("b.png"), 2);
    std::fs::write(dir.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let docs = [
        r#"{"text": "<image> a red circle <|endofchunk|> <image> a blue ring", "images": ["a.png", "b.png"]}"#,
        r#"{"text": "<image> gone", "images": ["missing.png"]}"#,
        r#"{"text": "<image> corrupt", "images": ["broken.jpg"]}"#,
        r#"{"text": "no markers here", "images": ["a.png"]}"#,
        r#"{"text": "<image> unterminated"#,
        "",
        r#"{"text": "<image> fine again", "images": ["b.png"]}"#,
    ];
    let manifest = dir.join("docs.jsonl");
    std::fs::write(&manifest, docs.join("\n")).unwrap();
    let (good, bad) = read_documents(&manifest, 8).unwrap();
    assert_eq!(good.iter().map(|d| d.line).collect::<Vec<_>>(), vec![1, 7]);
    assert_eq!(good[0].images.len(), 2);
    assert!(good[0].images.iter().all(|im| im.len() == 3 * 8 * 8));
    let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5]);
    assert!(bad[0].reason.contains("missing.png"), "{}", bad[0]);
    assert!(bad[1].reason.contains("broken.jpg"), "{}", bad[1]);
    assert!(bad[2].reason.contains("1 images but 0 <image> markers"), "{}", bad[2]);
    assert!(bad[3].reason.contains("malformed JSON"), "{}", bad[3]);

    let pairs = dir.join("pairs.jsonl");
    std::fs::write(&pairs, "{\"image\": \"a.png\", \"caption\": \"a red circle\"}\n{\"image\": \"broken.jpg\", \"caption\": \"x\"}\nnot json\n").unwrap();
    let (good, bad) = read_pairs(&pairs, 8).unwrap();
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].text, "<image> a red circle <|endofchunk|>");
    assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 3]);
}
