//! Throwaway PostgreSQL clusters of the test's own, on free loopback ports, in temporary
//! directories: for what the shared test database cannot show (a server that only accepts TLS,
//! a streaming replica). Each is stopped (immediate mode) and its directory removed on drop.
//!
//! The programs are Debian's (`/usr/lib/postgresql/<version>/bin`) or on the PATH. initdb and
//! postgres refuse to run as root, so under root the cluster belongs to the `postgres` user.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Client authentication that also lets replication connections in (trust, loopback only).
pub const REPLICATING_HBA: &str = "local all all trust\nlocal replication all trust\n\
host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";

#[derive(Debug)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    started: bool,
}

impl LocalCluster {
    /// A new cluster (initdb, trust authentication, superuser `postgres`) whose client
    /// authentication is `hba` (pg_hba.conf lines). Not started.
    pub fn init(name: &str, hba: &str) -> LocalCluster {
        let cluster = LocalCluster::empty(name);
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        std::fs::write(Path::new(&cluster.data()).join("pg_hba.conf"), hba).unwrap();
        cluster
    }

    /// A streaming replica of `primary` (which must be started and accept replication
    /// connections from 127.0.0.1): `pg_basebackup -R`, so it starts as a hot standby following
    /// the primary. Not started.
    pub fn replica_of(primary: &LocalCluster, name: &str) -> LocalCluster {
        LocalCluster::base_backup(primary, name, &["-R"])
    }

    /// A base backup of `primary` (as for a replica, without following it): what a
    /// point-in-time restore starts from. Not started.
    pub fn backup_of(primary: &LocalCluster, name: &str) -> LocalCluster {
        LocalCluster::base_backup(primary, name, &[])
    }

    fn base_backup(primary: &LocalCluster, name: &str, extra: &[&str]) -> LocalCluster {
        let copy = LocalCluster::empty(name);
        let port = primary.port.to_string();
        let data = copy.data();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            &data,
            "-X",
            "stream",
            "--no-sync",
            "-c",
            "fast",
        ];
        args.extend_from_slice(extra);
        copy.run("pg_basebackup", &args);
        copy
    }

    /// A directory in the cluster's own, owned by its user (a WAL archive, say).
    pub fn make_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::create_dir(&path).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        path
    }

    /// Writes `name` into the data directory (e.g. `recovery.signal`), owned by the cluster's
    /// user.
    pub fn write_data_file(&self, name: &str, contents: &str) {
        let path = Path::new(&self.data()).join(name);
        std::fs::write(&path, contents).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn empty(name: &str) -> LocalCluster {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("caselog-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let owner = running_as_root().then(|| user_ids("postgres"));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        LocalCluster {
            dir,
            port: free_port(),
            bin,
            owner,
            started: false,
        }
    }

    /// Writes a file into the cluster's directory, owned by the cluster's user, with `mode`.
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        path
    }

    /// Starts the server on 127.0.0.1 at its port, with its Unix socket in its own directory,
    /// with `settings` (`-c name=value …`) added; waits until it accepts connections.
    pub fn start(&mut self, settings: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {settings}",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &self.log(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.started = true;
    }

    /// A connection URL to the `postgres` database as `postgres`, at `host` (127.0.0.1 or
    /// localhost), with `parameters` (`sslmode=…`, or empty).
    pub fn url(&self, host: &str, parameters: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{parameters}", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.join("server.log").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let output = command.output().unwrap_or_else(|e| panic!("{program}: {e}"));
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        assert!(
            output.status.success(),
            "{program} failed: {}\n{}\n{log}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.started {
            let mut command = Command::new(self.bin.join("pg_ctl"));
            command.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
            if let Some((uid, gid)) = self.owner {
                command.uid(uid).gid(gid);
            }
            let _ = command.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb`, `pg_ctl`, `pg_basebackup` and `postgres`: Debian keeps them off
/// the PATH.
fn postgres_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    candidates.sort();
    candidates.reverse();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .expect("PostgreSQL's server programs (initdb, pg_ctl): install the postgresql package")
}

fn running_as_root() -> bool {
    command_output("id", &["-u"]) == "0"
}

fn user_ids(user: &str) -> (u32, u32) {
    let uid = command_output("id", &["-u", user]).parse().unwrap();
    let gid = command_output("id", &["-g", user]).parse().unwrap();
    (uid, gid)
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program} {args:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
