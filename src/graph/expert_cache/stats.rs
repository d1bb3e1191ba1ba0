//! The expert cache's eviction policies and its counters.

/// Which resident expert gives up its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    /// Least recently used.
    #[default]
    Lru,
    /// Least frequently selected (a decaying per-layer count, seeded from a profile when given), then LRU.
    Frequency,
}

impl std::str::FromStr for CachePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<CachePolicy, String> {
        match s {
            "lru" => Ok(CachePolicy::Lru),
            "freq" | "frequency" => Ok(CachePolicy::Frequency),
            _ => Err(format!("unknown cache policy {s:?} (lru, freq)")),
        }
    }
}

/// Counters since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Distinct experts a batch's router chose, summed over layers and batches.
    pub lookups: u64,
    /// Of those, resident when routed.
    pub hits: u64,
    /// Reads of an expert into a slot (misses and pre-warming).
    pub loads: u64,
    /// Loads issued by the router op, before the expert op needed them.
    pub loads_prefetched: u64,
    /// Loads already complete when the expert op first asked for them.
    pub loads_ready_on_use: u64,
    /// Of the loads, those a lookahead hint issued (a later layer's router on an earlier layer's input), used or
    /// not.
    pub loads_hinted: u64,
    pub bytes_read: u64,
    /// Time the expert op's first thread spent waiting for reads.
    pub wait_ns: u64,
}

impl CacheStats {
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.lookups)
    }

    /// Share of loads issued before the expert op needed them.
    pub fn prefetch_coverage(&self) -> f64 {
        ratio(self.loads_prefetched, self.loads)
    }

    /// Share of prefetched loads whose reads were over before the expert op needed them.
    pub fn hidden_rate(&self) -> f64 {
        ratio(self.loads_ready_on_use, self.loads_prefetched)
    }

    pub fn minus(&self, b: &CacheStats) -> CacheStats {
        CacheStats {
            lookups: self.lookups - b.lookups,
            hits: self.hits - b.hits,
            loads: self.loads - b.loads,
            loads_prefetched: self.loads_prefetched - b.loads_prefetched,
            loads_ready_on_use: self.loads_ready_on_use - b.loads_ready_on_use,
            loads_hinted: self.loads_hinted - b.loads_hinted,
            bytes_read: self.bytes_read - b.bytes_read,
            wait_ns: self.wait_ns - b.wait_ns,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
