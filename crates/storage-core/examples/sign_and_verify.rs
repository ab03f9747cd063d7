//! Signs a short chain, encodes a block in all eight wire formats, decodes each
//! back and verifies it. Run: `cargo run -p storage-core --example sign_and_verify`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use storage_core::{Block, BlockPayload, SigningKey, WireFormat, verify_chain};

#[derive(Debug, Serialize, Deserialize)]
struct Attestation {
    subject: String,
    claim: String,
}

impl BlockPayload for Attestation {
    const PAYLOAD_TYPE: &'static str = "example.attestation/v1";
}

fn main() -> storage_core::Result<()> {
    let key = SigningKey::from_bytes(&[42; 32]);
    let t0 = SystemTime::now();
    let mut chain = vec![Block::genesis(
        &Attestation {
            subject: "device-7".into(),
            claim: "provisioned".into(),
        },
        &key,
        t0,
    )?];
    for (i, claim) in ["calibrated", "deployed", "inspected"].iter().enumerate() {
        let prev = chain.last().expect("non-empty");
        let next = Block::next(
            prev,
            &Attestation {
                subject: "device-7".into(),
                claim: (*claim).into(),
            },
            &key,
            t0 + Duration::from_millis(i as u64 + 1),
        )?;
        chain.push(next);
    }
    verify_chain(&chain)?;
    println!(
        "chain of {} blocks verifies; head {}",
        chain.len(),
        chain[3].hash()
    );

    let block = &chain[3];
    for format in WireFormat::all() {
        let bytes = format.encode(block)?;
        let back = format.decode(&bytes)?;
        assert_eq!(back.hash(), block.hash());
        println!(
            "{:<36} {:>4} bytes, round trip ok",
            format.content_type(),
            bytes.len()
        );
    }
    let a: Attestation = block.decode_payload()?;
    println!("payload: {a:?}; as JSON: {}", block.payload_json()?);
    Ok(())
}
