//! The wildcard patterns of a [`super::DnsRuleSet`], merged into one tree so a query costs
//! about one walk down its own labels, however many rules there are (SEMANTICS 5.4).
//!
//! Patterns are read from the right, one label per level: `*.team1.example.com` is
//! `com` → `example` → `team1` → `*`. A literal label is a hash lookup. Glob labels hang
//! off a node filed by their literal prefix (`api1-*` under `api1-`), or failing that by
//! their literal suffix (`*-api1` under `-api1`), so a query label probes only the affix
//! lengths present instead of trying every glob; only globs with neither (`*`, `*x*`) are
//! tried one by one. Equal labels of different patterns share a node, so each node is
//! visited at most once per query, and a subtree whose lowest rule index cannot beat the
//! best match so far is skipped.

use std::collections::HashMap;

use super::{Glob, LabelPattern, LabelsPattern};

/// The labels of a query not yet consumed, right to left; cloned at each branch.
type LabelsLeft<'a> = std::slice::RSplit<'a, u8, fn(&u8) -> bool>;

#[derive(Debug, Clone)]
pub(super) struct PatternTrie {
    /// `nodes[0]` is the root, above the last label.
    nodes: Vec<Node>,
}

impl Default for PatternTrie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::new(usize::MAX)],
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    /// Lowest rule whose labels end here: the name has no label left.
    end: Option<usize>,
    /// Lowest rule `**.<labels down to here>`: the name has one or more labels left.
    deeper: Option<usize>,
    /// Lowest rule index in this node's subtree. Rules are inserted in index order, so it
    /// is the rule that created the node (the root is updated on every insert).
    subtree_min: usize,
    /// Literal labels to child nodes.
    literal: HashMap<Box<[u8]>, usize>,
    /// Glob labels to child nodes.
    globs: GlobEdges,
}

impl Node {
    fn new(subtree_min: usize) -> Self {
        Self {
            end: None,
            deeper: None,
            subtree_min,
            literal: HashMap::new(),
            globs: GlobEdges::default(),
        }
    }
}

/// The glob labels below one node, each with its child node.
#[derive(Debug, Clone, Default)]
struct GlobEdges {
    /// Every glob here, to its child: finds an equal glob when inserting.
    children: HashMap<Glob, usize>,
    /// Globs with a literal prefix, by that prefix.
    by_prefix: Affixed,
    /// Globs without a literal prefix but with a literal suffix, by that suffix.
    by_suffix: Affixed,
    /// Globs with neither.
    floating: Vec<(Glob, usize)>,
}

#[derive(Debug, Clone, Default)]
struct Affixed {
    edges: HashMap<Box<[u8]>, Vec<(Glob, usize)>>,
    /// The distinct key lengths in `edges`, ascending.
    lens: Vec<usize>,
}

impl Affixed {
    fn bucket(&mut self, key: &[u8]) -> &mut Vec<(Glob, usize)> {
        if let Err(at) = self.lens.binary_search(&key.len()) {
            self.lens.insert(at, key.len());
        }
        self.edges.entry(key.into()).or_default()
    }

    /// Children of the globs filed under a key that `affix(label, len)` yields.
    fn for_each_match(
        &self,
        label: &[u8],
        affix: fn(&[u8], usize) -> Option<&[u8]>,
        mut f: impl FnMut(usize),
    ) {
        for &len in &self.lens {
            let Some(key) = affix(label, len) else {
                break; // lengths ascend: the rest are longer than the label
            };
            for (glob, child) in self.edges.get(key).into_iter().flatten() {
                if glob.matches(label) {
                    f(*child);
                }
            }
        }
    }
}

impl GlobEdges {
    /// The child for `glob`, if an equal glob is already here; otherwise file `glob` with
    /// the child `fresh`.
    fn get_or_add(&mut self, glob: &Glob, fresh: usize) -> Option<usize> {
        if let Some(&child) = self.children.get(glob) {
            return Some(child);
        }
        self.children.insert(glob.clone(), fresh);
        let edges = if !glob.prefix.is_empty() {
            self.by_prefix.bucket(&glob.prefix)
        } else if !glob.suffix.is_empty() {
            self.by_suffix.bucket(&glob.suffix)
        } else {
            &mut self.floating
        };
        edges.push((glob.clone(), fresh));
        None
    }

    /// Call `f` with the child of every glob matching `label`.
    fn for_each_match(&self, label: &[u8], mut f: impl FnMut(usize)) {
        self.by_prefix
            .for_each_match(label, |l, n| l.get(..n), &mut f);
        self.by_suffix
            .for_each_match(label, |l, n| l.get(l.len().checked_sub(n)?..), &mut f);
        for (glob, child) in &self.floating {
            if glob.matches(label) {
                f(*child);
            }
        }
    }
}

impl PatternTrie {
    /// Add a pattern; `index` must not be lower than any index inserted before.
    pub(super) fn insert(&mut self, pattern: &LabelsPattern, index: usize) {
        if let Some(root) = self.nodes.first_mut() {
            root.subtree_min = root.subtree_min.min(index);
        }
        let mut at = 0;
        for label in pattern.labels.iter().rev() {
            at = self.child(at, label, index);
        }
        if let Some(node) = self.nodes.get_mut(at) {
            let slot = if pattern.any_prefix {
                &mut node.deeper
            } else {
                &mut node.end
            };
            slot.get_or_insert(index);
        }
    }

    /// The node below `parent` for `label`, created (as part of rule `index`) if absent.
    fn child(&mut self, parent: usize, label: &LabelPattern, index: usize) -> usize {
        let fresh = self.nodes.len();
        let Some(node) = self.nodes.get_mut(parent) else {
            return parent;
        };
        let found = match label {
            LabelPattern::Literal(text) => {
                let slot = node.literal.entry(text.clone()).or_insert(fresh);
                Some(*slot).filter(|&existing| existing != fresh)
            }
            LabelPattern::Glob(glob) => node.globs.get_or_add(glob, fresh),
        };
        found.unwrap_or_else(|| {
            self.nodes.push(Node::new(index));
            fresh
        })
    }

    /// The lowest rule index matching `name` (a prepared [`super::Query::Name`]), or
    /// `best` if that is lower.
    pub(super) fn lowest_match(&self, name: &[u8], best: Option<usize>) -> Option<usize> {
        let is_dot: fn(&u8) -> bool = |&b| b == b'.';
        let mut best = best;
        self.visit(0, name.rsplit(is_dot), &mut best);
        best
    }

    fn visit(&self, at: usize, mut labels: LabelsLeft<'_>, best: &mut Option<usize>) {
        let Some(node) = self.nodes.get(at) else {
            return;
        };
        if best.is_some_and(|b| node.subtree_min >= b) {
            return;
        }
        let Some(label) = labels.next() else {
            improve(best, node.end);
            return;
        };
        // `**.` wants one or more further labels; preparation made them valid labels.
        improve(best, node.deeper);
        if let Some(&child) = node.literal.get(label) {
            self.visit(child, labels.clone(), best);
        }
        node.globs
            .for_each_match(label, |child| self.visit(child, labels.clone(), best));
    }
}

fn improve(best: &mut Option<usize>, candidate: Option<usize>) {
    if let Some(c) = candidate
        && best.is_none_or(|b| c < b)
    {
        *best = Some(c);
    }
}
