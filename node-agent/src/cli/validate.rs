//! `node-agent policy validate PATH...`

use std::path::PathBuf;
use std::process::ExitCode;

use crate::manifest;

pub fn run(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut errors = 0usize;
    let mut objects = 0usize;
    for path in paths {
        let files = match super::manifest_files(path, true) {
            Ok(files) => files,
            Err(e) => {
                println!("{}: -: -: cannot read: {}", path.display(), e.root_cause());
                errors += 1;
                continue;
            }
        };
        for file in files {
            let parsed = manifest::read_file(&file);
            objects += parsed.objects.len();
            for error in &parsed.errors {
                println!("{error}");
            }
            errors += parsed.errors.len();
            for skipped in &parsed.skipped {
                eprintln!(
                    "{}: {skipped}: skipped (kind not used by node-agent)",
                    file.display()
                );
            }
        }
    }
    if errors == 0 {
        eprintln!("{objects} objects valid");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{errors} errors, {objects} objects valid");
        Ok(ExitCode::from(1))
    }
}
