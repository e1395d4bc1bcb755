//! The launcher layer of a multi-rank case: who starts the ranks and what each one is told.
//! Either this worker starts all N ranks as local python processes (`Launcher::Local`, the
//! `local` and `docker` executors), or Slurm started N copies of this worker as the tasks of one
//! step and this one is a single rank of them (`Launcher::Slurm`): its identity then comes from
//! `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NODEID`, and the rendezvous from the
//! `MASTER_ADDR`/`MASTER_PORT` the host put into the step's environment. Pure functions: the
//! environment comes in as a lookup, so that the rules are unit-tested.

use crate::case::Device;

/// Set (to `1`) by the Slurm executor in the environment of the tasks of a multi-rank step: the
/// worker is then one rank of the group, not the launcher of all of them. Explicit, because a
/// tagbench that itself runs inside an `srun` sees `SLURM_PROCID` too.
pub const SLURM_RANKS_VAR: &str = "TAGBENCH_SLURM_RANKS";

/// One rank's place in its group, whoever launched it.
#[derive(Debug, Clone, PartialEq)]
pub struct RankSpec {
    pub rank: usize,
    pub world: usize,
    /// The rank's index among the ranks on its node (its GPU there).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// How many ranks share this node's cores.
    pub ranks_on_node: usize,
    /// Whether every rank runs on this host: gloo is then pinned to loopback, which a container
    /// without a network still has. Across nodes gloo takes the interface of the host name.
    pub loopback: bool,
}

impl RankSpec {
    /// The variables a rank's python gets: torch.distributed's `env://` rendezvous, and on the
    /// CPU one intra-op thread pool per rank sized to its share of the cores (N full-width pools
    /// would oversubscribe the cores N times). What the user set (`is_set`) is left alone.
    pub fn env(&self, device: Device, cores: usize, is_set: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        let mut e = vec![
            ("MASTER_ADDR".to_string(), self.master_addr.clone()),
            ("MASTER_PORT".to_string(), self.master_port.to_string()),
            ("WORLD_SIZE".to_string(), self.world.to_string()),
            ("RANK".to_string(), self.rank.to_string()),
            ("LOCAL_RANK".to_string(), self.local_rank.to_string()),
        ];
        if self.loopback && !is_set("GLOO_SOCKET_IFNAME") {
            e.push(("GLOO_SOCKET_IFNAME".to_string(), "lo".to_string()));
        }
        if device == Device::Cpu && self.ranks_on_node > 1 && !is_set("OMP_NUM_THREADS") {
            let threads = (cores / self.ranks_on_node).max(1);
            e.push(("OMP_NUM_THREADS".to_string(), threads.to_string()));
        }
        e
    }
}

/// A TCP port on loopback that was free a moment ago, for the rendezvous of local ranks.
pub fn free_port() -> Result<u16, crate::error::CaseError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            crate::error::CaseError::Failed(anyhow::anyhow!("failed to find a free loopback port: {e}"))
        })
}

/// This worker as one task of a multi-rank Slurm step.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmRank {
    pub spec: RankSpec,
    /// The node's name (`SLURMD_NODENAME`), for messages.
    pub node: String,
}

impl SlurmRank {
    /// `rank 1 on n2`: how messages name this rank.
    pub fn label(&self) -> String {
        format!("rank {} on {}", self.spec.rank, self.node)
    }
}

/// Who starts the ranks of a multi-rank case.
#[derive(Debug, Clone, PartialEq)]
pub enum Launcher {
    /// This worker starts every rank as a local process.
    Local,
    /// Slurm started the ranks as the tasks of one step; this worker is one of them.
    Slurm(SlurmRank),
}

impl Launcher {
    /// The launcher this process was started under.
    pub fn from_env() -> Result<Launcher, String> {
        Launcher::from_vars(|k| std::env::var(k).ok())
    }

    /// The launcher given the environment `get`: `Local` unless [`SLURM_RANKS_VAR`] is set, and
    /// then every variable Slurm and the host must have set, or an error naming the missing one.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Launcher, String> {
        if get(SLURM_RANKS_VAR).is_none_or(|v| v.is_empty() || v == "0") {
            return Ok(Launcher::Local);
        }
        let var = |k: &str| {
            get(k).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                format!("{SLURM_RANKS_VAR} is set but {k} is not: this worker must be a task of an srun step")
            })
        };
        let number = |k: &str| -> Result<usize, String> {
            let v = var(k)?;
            v.trim().parse().map_err(|_| format!("{k}={v} is not a number"))
        };
        let rank = number("SLURM_PROCID")?;
        let world = number("SLURM_NTASKS")?;
        let local_rank = number("SLURM_LOCALID")?;
        let node_id = number("SLURM_NODEID")?;
        if rank >= world {
            return Err(format!("SLURM_PROCID={rank} is not below SLURM_NTASKS={world}"));
        }
        let master_port = var("MASTER_PORT")?;
        let master_port = master_port
            .trim()
            .parse()
            .map_err(|_| format!("MASTER_PORT={master_port} is not a port"))?;
        // Tasks on this node, from the step's layout (`2(x2)`); one when Slurm did not say.
        let ranks_on_node = get("SLURM_STEP_TASKS_PER_NODE")
            .and_then(|s| tasks_per_node(&s))
            .and_then(|t| t.get(node_id).copied())
            .unwrap_or(1);
        Ok(Launcher::Slurm(SlurmRank {
            spec: RankSpec {
                rank,
                world,
                local_rank,
                master_addr: var("MASTER_ADDR")?,
                master_port,
                ranks_on_node,
                loopback: false,
            },
            node: get("SLURMD_NODENAME").unwrap_or_else(|| format!("node {node_id}")),
        }))
    }
}

/// Slurm's compressed tasks-per-node list, one count per node of the step: `2(x3),1` is
/// `[2, 2, 2, 1]`. `None` when it does not parse.
pub fn tasks_per_node(spec: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in spec.trim().split(',') {
        let (count, times) = match part.split_once("(x") {
            Some((c, t)) => (c, t.strip_suffix(')')?),
            None => (part, "1"),
        };
        let count: usize = count.trim().parse().ok()?;
        let times: usize = times.trim().parse().ok()?;
        out.extend(std::iter::repeat_n(count, times));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const TASK: [(&str, &str); 9] = [
        (SLURM_RANKS_VAR, "1"),
        ("SLURM_PROCID", "3"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NODEID", "1"),
        ("SLURM_STEP_TASKS_PER_NODE", "2(x2)"),
        ("SLURMD_NODENAME", "n2"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn slurm_task_identity() {
        let Launcher::Slurm(me) = Launcher::from_vars(vars(&TASK)).unwrap() else {
            panic!("not a slurm rank");
        };
        assert_eq!(me.label(), "rank 3 on n2");
        assert_eq!(
            me.spec,
            RankSpec {
                rank: 3,
                world: 4,
                local_rank: 1,
                master_addr: "10.0.0.1".into(),
                master_port: 29500,
                ranks_on_node: 2,
                loopback: false,
            }
        );
        let env: Vec<String> = me
            .spec
            .env(Device::Cpu, 8, |_| false)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            env,
            [
                "MASTER_ADDR=10.0.0.1",
                "MASTER_PORT=29500",
                "WORLD_SIZE=4",
                "RANK=3",
                "LOCAL_RANK=1",
                "OMP_NUM_THREADS=4"
            ]
        );
        // What the user set stays; GPU ranks get no thread count.
        assert_eq!(me.spec.env(Device::Cpu, 8, |k| k == "OMP_NUM_THREADS").len(), 5);
        assert_eq!(me.spec.env(Device::Cuda, 8, |_| false).len(), 5);
    }

    #[test]
    fn local_unless_the_step_says_so() {
        // A tagbench inside an srun sees SLURM_PROCID, but without the host's marker it launches.
        assert_eq!(Launcher::from_vars(vars(&TASK[1..])).unwrap(), Launcher::Local);
        assert_eq!(
            Launcher::from_vars(vars(&[(SLURM_RANKS_VAR, "0")])).unwrap(),
            Launcher::Local
        );
        let missing: Vec<(&str, &str)> = TASK
            .iter()
            .filter(|(k, _)| *k != "MASTER_ADDR")
            .copied()
            .collect();
        let e = Launcher::from_vars(vars(&missing)).unwrap_err();
        assert!(e.contains("MASTER_ADDR is not"), "{e}");
        let bad: Vec<(&str, &str)> = TASK
            .iter()
            .map(|&(k, v)| if k == "SLURM_PROCID" { (k, "4") } else { (k, v) })
            .collect();
        assert!(Launcher::from_vars(vars(&bad)).unwrap_err().contains("not below"));
    }

    #[test]
    fn local_ranks_use_loopback() {
        let spec = RankSpec {
            rank: 0,
            world: 2,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1234,
            ranks_on_node: 2,
            loopback: true,
        };
        let env = spec.env(Device::Cpu, 1, |_| false);
        assert!(env.contains(&("GLOO_SOCKET_IFNAME".into(), "lo".into())));
        assert!(env.contains(&("OMP_NUM_THREADS".into(), "1".into())));
        assert!(!spec
            .env(Device::Cpu, 1, |k| k == "GLOO_SOCKET_IFNAME")
            .iter()
            .any(|(k, _)| k == "GLOO_SOCKET_IFNAME"));
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn tasks_per_node_expands() {
        assert_eq!(tasks_per_node("2(x3),1"), Some(vec![2, 2, 2, 1]));
        assert_eq!(tasks_per_node("4"), Some(vec![4]));
        assert_eq!(tasks_per_node("2,1"), Some(vec![2, 1]));
        assert_eq!(tasks_per_node("x"), None);
    }
}
