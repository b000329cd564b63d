//! The start-up's writes of the file units (`offload.optimizer = nvme`),
//! on a thread of their own: while one unit is written to its file, the
//! next is drawn (the draws keep the cores busy, the write waits on the
//! disk). The hand-over is a rendezvous, so at most one unit more than
//! before is in host memory: the one being written while the next is made.
//! One writer, units in the order given: the files are the same, byte for
//! byte, as written in line.

use super::host_optimizer::UnitHost;
use super::nvme::StateFiles;
use anyhow::{anyhow, Result};
use std::sync::mpsc::sync_channel;

/// Runs `body` with a `to_file(unit)` that hands each unit to a writer
/// thread for `files`; returns when every unit handed over is written.
/// A write's error is returned rather than `body`'s (which then only
/// says the writer stopped).
pub fn write_behind<R>(files: &StateFiles, body: impl FnOnce(&mut dyn FnMut(UnitHost) -> Result<()>) -> Result<R>) -> Result<R> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<UnitHost>(0);
        let writer = std::thread::Builder::new()
            .name("offload-start-writer".into())
            .spawn_scoped(s, move || -> Result<()> {
                for mut host in rx {
                    files.write(&mut host)?;
                }
                Ok(())
            })?;
        let out = body(&mut |host| tx.send(host).map_err(|_| anyhow!("offload: the start-up's file writer stopped")));
        drop(tx);
        writer.join().map_err(|_| anyhow!("offload: the start-up's file writer panicked"))??;
        out
    })
}
