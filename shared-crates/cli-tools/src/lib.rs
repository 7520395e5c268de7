//! Shell completions and man pages for a binary, made from its clap definition so they
//! cannot drift from the flags it takes.
//!
//! Each binary flattens [`Extra`] into its command line: `queen completions bash`,
//! `hive completions zsh`, and the hidden `man --dir D` that `cargo xtask dist` uses to
//! write `queen.1`, `queen-serve.1`, ... into a package.

use std::path::PathBuf;

/// The commands every binary has beside its own.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Extra {
    /// Print a completion script for a shell: `source <(queen completions bash)`, or save it
    /// where the shell looks (bash: /usr/share/bash-completion/completions/queen).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (the command's and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        dir: PathBuf,
    },
}

impl Extra {
    /// Does what was asked for `command` (the binary's whole clap definition), writing
    /// completions to stdout.
    pub fn run(&self, mut command: clap::Command) -> std::io::Result<()> {
        match self {
            Extra::Completions { shell } => {
                let name = command.get_name().to_string();
                clap_complete::generate(*shell, &mut command, name, &mut std::io::stdout());
                Ok(())
            }
            Extra::Man { dir } => {
                std::fs::create_dir_all(dir)?;
                clap_mangen::generate_to(command, dir)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    #[command(name = "demo", version, about = "A demo")]
    struct Demo {
        #[arg(long)]
        verbose: bool,
        #[command(subcommand)]
        extra: Option<Extra>,
    }

    #[test]
    fn man_pages_cover_every_subcommand_and_name_their_flags() {
        let dir = std::env::temp_dir().join(format!("cli-tools-man-{}", std::process::id()));
        Extra::Man { dir: dir.clone() }.run(Demo::command()).expect("man pages");
        let top = std::fs::read_to_string(dir.join("demo.1")).expect("demo.1");
        assert!(top.contains("verbose"), "the flag is documented: {top}");
        assert!(dir.join("demo-completions.1").is_file(), "a page per subcommand");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_completions_command_parses_each_shell() {
        for shell in ["bash", "zsh", "fish"] {
            let demo = Demo::try_parse_from(["demo", "completions", shell]).expect("parses");
            assert!(matches!(demo.extra, Some(Extra::Completions { .. })), "{shell}");
        }
        assert!(Demo::try_parse_from(["demo", "completions", "tcsh-nope"]).is_err());
    }
}
