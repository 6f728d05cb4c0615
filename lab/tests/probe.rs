#![allow(clippy::unwrap_used, missing_docs)]
use std::time::Duration;
use stunfwd_lab::*;

#[test]
fn probe() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let world = World::new(WorldOptions::default()).await.unwrap();
        for kind in NatKind::ALL {
            let (_r, devs) = world
                .site(&format!("s{}", kind as u8), kind, 1, None)
                .await
                .unwrap();
            let mut cmd = tokio::process::Command::new(stunfwd_bin());
            cmd.args([
                "nat",
                "--stun",
                &world.coturn[0].to_string(),
                "--stun",
                &world.coturn[1].to_string(),
            ]);
            let out = devs[0]
                .spawn_command({
                    cmd.stdout(std::process::Stdio::piped());
                    cmd
                })
                .unwrap()
                .wait_with_output()
                .await
                .unwrap();
            println!(
                "== {}:\n{}",
                kind.name(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let _ = Duration::from_secs(1);
    });
}
