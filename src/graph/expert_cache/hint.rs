//! Lookahead hints: a later layer's router applied to an earlier layer's input predicts the experts that layer
//! will choose (the residual stream changes little from one layer to the next), so their reads can start
//! several layers before its own router runs, instead of only during its attention. A hint never blocks and
//! never takes a slot something else needs: it fills free or evictable slots, and its slot is evicted only when
//! nothing else can be until its layer is routed.

use super::{lock, CacheCore, Inner};

impl CacheCore {
    /// Layer `il` is expected to choose `ids` (any number of tokens x k): queues reads of those not resident
    /// while evictable slots remain. Counted in `loads` and `loads_hinted`, not as lookups.
    pub fn hint(&self, il: u32, ids: &[i32]) {
        let base = il as usize * self.n_expert;
        let mut want: Vec<usize> = ids
            .iter()
            .filter(|&&e| e >= 0 && (e as usize) < self.n_expert)
            .map(|&e| base + e as usize)
            .collect();
        want.sort_unstable();
        want.dedup();
        let mut g = lock(&self.inner);
        for key in want {
            if g.slot_of[key].is_some() {
                continue;
            }
            let Some(slot) = self.victim(&g, false) else {
                break;
            };
            self.load_into(&mut g, slot, key, true);
            g.tick += 1;
            g.meta[slot].last_use = g.tick;
            g.meta[slot].hinted = true;
            g.hinted.push(slot);
            g.stats.loads_hinted += 1;
        }
    }

    /// Layer `il` is being routed: its hinted slots become ordinary ones.
    pub(super) fn end_hints(&self, g: &mut Inner, il: usize) {
        let n = self.n_expert;
        let Inner { meta, hinted, .. } = g;
        hinted.retain(|&s| {
            let ours = meta[s].key.is_some_and(|k| k / n == il);
            if ours {
                meta[s].hinted = false;
            }
            !ours
        });
    }
}
