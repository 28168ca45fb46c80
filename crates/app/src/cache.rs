//! A cache of cases bounded by what its entries weigh (their bytes in memory), not by how many
//! there are: a few outsized cases (a migration's, say) cannot fill memory, and many small ones
//! are not turned away.
//!
//! Eviction takes the entry put longest ago. Both users (the write path's case cache, the
//! projector's history cache) take a case out to use it and put it back, so that is the entry
//! used longest ago, with no bookkeeping beyond the put. It was "any entry" (the hash table's
//! first) until a bulk load showed why not: once the cache was full of the load's large cases,
//! which were never touched again, each put evicted whichever live case sat first in the table,
//! and live appends missed the cache about once each, at half the rate (docs/benchmarks.md).

use std::collections::{BTreeMap, HashMap};

#[derive(Debug)]
pub struct WeightedCache<V> {
    /// Each entry with its weight (weighed once, when put) and when it was put.
    entries: HashMap<String, Entry<V>>,
    /// The keys by when they were put, oldest first.
    by_age: BTreeMap<u64, String>,
    /// The next put's stamp.
    next_put: u64,
    /// Sum of the entries' weights.
    weight: usize,
    /// The most the entries may weigh together (0: hold nothing).
    budget: usize,
    weigh: fn(&V) -> usize,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    weight: usize,
    put: u64,
}

impl<V> WeightedCache<V> {
    pub fn new(budget: usize, weigh: fn(&V) -> usize) -> WeightedCache<V> {
        WeightedCache {
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_put: 0,
            weight: 0,
            budget,
            weigh,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the entries weigh together.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// Takes an entry out (a caller that extends it puts it back).
    pub fn take(&mut self, key: &str) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.by_age.remove(&entry.put);
        self.weight -= entry.weight;
        Some(entry.value)
    }

    /// Holds `value` under `key`, evicting the entries put longest ago as needed; a value heavier
    /// than the whole budget is not held.
    pub fn put(&mut self, key: String, value: V) {
        self.take(&key);
        let weight = (self.weigh)(&value);
        if weight > self.budget {
            return;
        }
        while self.weight + weight > self.budget {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.weight -= evicted.weight;
            }
        }
        let put = self.next_put;
        self.next_put += 1;
        self.by_age.insert(put, key.clone());
        self.weight += weight;
        self.entries.insert(key, Entry { value, weight, put });
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.weight = 0;
        self.entries.clear();
        self.by_age.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever is put and taken, the entries never weigh more than the budget, the weight
        /// kept is their sum, and an entry put last is held unless it alone is too heavy.
        #[test]
        fn the_budget_holds(budget in 0usize..200, ops in prop::collection::vec((0u8..12, 0usize..80, any::<bool>()), 0..200)) {
            let mut cache: WeightedCache<usize> = WeightedCache::new(budget, |w| *w);
            for (key, weight, put) in ops {
                let key = key.to_string();
                if put {
                    cache.put(key.clone(), weight);
                    prop_assert_eq!(cache.take(&key).is_some(), weight <= budget);
                    cache.put(key, weight);
                } else {
                    cache.take(&key);
                }
                prop_assert!(cache.weight() <= budget);
                prop_assert_eq!(cache.weight(), cache.entries.values().map(|entry| entry.value).sum::<usize>());
                prop_assert_eq!(cache.by_age.len(), cache.entries.len());
            }
        }
    }

    /// A bulk load leaves the cache full of large cases nobody touches again; live cases, each
    /// taken and put back a little heavier on every use, then push those out, not each other.
    #[test]
    fn live_cases_push_out_the_cases_left_untouched() {
        let mut cache: WeightedCache<usize> = WeightedCache::new(10_000, |w| *w);
        for stale in 0..100 {
            cache.put(format!("loaded-{stale}"), 100);
        }
        let live: Vec<String> = (0..50).map(|case| format!("live-{case}")).collect();
        let mut misses = 0;
        for round in 0..40 {
            for case in &live {
                let weight = match cache.take(case) {
                    Some(weight) => weight + 1,
                    None => {
                        if round > 0 {
                            misses += 1;
                        }
                        10
                    }
                };
                cache.put(case.clone(), weight);
            }
        }
        assert_eq!(misses, 0, "a live case was evicted while untouched ones stayed");
        assert!(cache.weight() <= 10_000);
        let loaded_left = cache.entries.keys().filter(|key| key.starts_with("loaded-")).count();
        assert!(loaded_left < 100, "the untouched cases made room");
    }
}
