//! A cache of cases bounded by what its entries weigh (their bytes in memory), not by how many
//! there are: a few outsized cases (a migration's, say) cannot fill memory, and many small ones
//! are not turned away.
//!
//! Eviction takes any entry: both users (the write path's case cache, the projector's history
//! cache) are correct on a miss, which costs one read, and no recency is tracked on their hot
//! paths.

use std::collections::HashMap;

#[derive(Debug)]
pub struct WeightedCache<V> {
    /// Each entry with its weight, weighed once when put.
    entries: HashMap<String, (V, usize)>,
    /// Sum of the entries' weights.
    weight: usize,
    /// The most the entries may weigh together (0: hold nothing).
    budget: usize,
    weigh: fn(&V) -> usize,
}

impl<V> WeightedCache<V> {
    pub fn new(budget: usize, weigh: fn(&V) -> usize) -> WeightedCache<V> {
        WeightedCache {
            entries: HashMap::new(),
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
        let (value, weight) = self.entries.remove(key)?;
        self.weight -= weight;
        Some(value)
    }

    /// Holds `value` under `key`, evicting other entries as needed; a value heavier than the
    /// whole budget is not held.
    pub fn put(&mut self, key: String, value: V) {
        self.take(&key);
        let weight = (self.weigh)(&value);
        if weight > self.budget {
            return;
        }
        while self.weight + weight > self.budget {
            let Some(evicted) = self.entries.keys().next().cloned() else {
                break;
            };
            self.take(&evicted);
        }
        self.weight += weight;
        self.entries.insert(key, (value, weight));
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.weight = 0;
        self.entries.clear();
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
                prop_assert_eq!(cache.weight(), cache.entries.values().map(|(value, _)| *value).sum::<usize>());
            }
        }
    }
}
