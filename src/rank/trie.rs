//! A token trie over the candidates' output tokenizations, for constrained decoding.
//!
//! Each candidate contributes one path: the token ids of its title exactly as the
//! model must write it in the answer (title plus line end). Decoding walks the trie
//! from the root; at every step only the children of the current node that still
//! lead to an unused candidate are allowed, so the model can only name candidates
//! and, once a candidate is taken, never names it again. Candidates with identical
//! tokenizations (duplicate titles) share a leaf and are handed out one at a time.

/// Index of a node; the root is 0.
pub type NodeId = u32;

#[derive(Debug, Clone, Default)]
struct Node {
    /// (token, child), sorted by token.
    children: Vec<(u32, NodeId)>,
    /// Candidates (slots) whose path ends here, in insertion order.
    ends: Vec<u32>,
    /// Unused candidates at or below this node.
    live: u32,
}

#[derive(Debug, Clone)]
pub struct TokenTrie {
    nodes: Vec<Node>,
    /// For each slot: its leaf.
    leaf_of: Vec<NodeId>,
    /// For each slot: whether it has been taken.
    taken: Vec<bool>,
}

impl TokenTrie {
    /// Builds the trie from one token path per candidate slot. Empty paths are rejected.
    pub fn new(paths: &[Vec<u32>]) -> Result<Self, String> {
        let mut t = TokenTrie {
            nodes: vec![Node::default()],
            leaf_of: Vec::with_capacity(paths.len()),
            taken: vec![false; paths.len()],
        };
        for (slot, path) in paths.iter().enumerate() {
            if path.is_empty() {
                return Err(format!("candidate {slot} has an empty tokenization"));
            }
            let mut node = 0usize;
            t.nodes[0].live += 1;
            for &tok in path {
                let next = match t.nodes[node].children.binary_search_by_key(&tok, |c| c.0) {
                    Ok(i) => t.nodes[node].children[i].1 as usize,
                    Err(i) => {
                        let id = t.nodes.len();
                        t.nodes.push(Node::default());
                        t.nodes[node].children.insert(i, (tok, id as NodeId));
                        id
                    }
                };
                node = next;
                t.nodes[node].live += 1;
            }
            t.nodes[node].ends.push(slot as u32);
            t.leaf_of.push(node as NodeId);
        }
        Ok(t)
    }

    pub fn root(&self) -> NodeId {
        0
    }

    /// Unused candidates left.
    pub fn remaining(&self) -> usize {
        self.nodes[0].live as usize
    }

    /// Tokens allowed after `node`: children that still lead to an unused candidate.
    pub fn allowed(&self, node: NodeId) -> impl Iterator<Item = (u32, NodeId)> + '_ {
        self.nodes[node as usize]
            .children
            .iter()
            .copied()
            .filter(|&(_, c)| self.nodes[c as usize].live > 0)
    }

    /// The child of `node` reached by `token`, if allowed.
    pub fn step(&self, node: NodeId, token: u32) -> Option<NodeId> {
        let n = &self.nodes[node as usize];
        let i = n.children.binary_search_by_key(&token, |c| c.0).ok()?;
        let child = n.children[i].1;
        (self.nodes[child as usize].live > 0).then_some(child)
    }

    /// The unused candidate whose path ends at `node`, if any (the first inserted).
    pub fn complete(&self, node: NodeId) -> Option<u32> {
        self.nodes[node as usize]
            .ends
            .iter()
            .copied()
            .find(|&s| !self.taken[s as usize])
    }

    /// The only allowed continuation of `node`, when there is exactly one and no
    /// candidate ends at `node` (so the next token is forced).
    pub fn forced(&self, node: NodeId) -> Option<(u32, NodeId)> {
        if self.complete(node).is_some() {
            return None;
        }
        let mut it = self.allowed(node);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    /// Marks `slot` as used: its path no longer counts towards any node's live set.
    pub fn take(&mut self, slot: u32, path: &[u32]) {
        if std::mem::replace(&mut self.taken[slot as usize], true) {
            return;
        }
        let mut node = 0usize;
        self.nodes[0].live -= 1;
        for &tok in path {
            let n = &self.nodes[node];
            let i = n
                .children
                .binary_search_by_key(&tok, |c| c.0)
                .expect("path of a slot");
            node = n.children[i].1 as usize;
            self.nodes[node].live -= 1;
        }
        debug_assert_eq!(node as NodeId, self.leaf_of[slot as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_forced_steps_and_removal() {
        // Slots 0 and 1 share [1, 2, 3]; slot 2 is a duplicate of slot 0.
        let paths = vec![
            vec![1, 2, 3, 4, 9],
            vec![1, 2, 3, 5, 9],
            vec![1, 2, 3, 4, 9],
            vec![7, 9],
        ];
        let mut t = TokenTrie::new(&paths).unwrap();
        assert_eq!(t.remaining(), 4);
        let root = t.root();
        let first: Vec<u32> = t.allowed(root).map(|c| c.0).collect();
        assert_eq!(first, vec![1, 7]);
        let n1 = t.step(root, 1).unwrap();
        let (tok, n2) = t.forced(n1).unwrap();
        assert_eq!(tok, 2);
        let (_, n3) = t.forced(n2).unwrap();
        assert!(t.forced(n3).is_none(), "branches at 4/5");
        assert!(t.step(n3, 6).is_none(), "6 is not a candidate continuation");
        let leaf = t.step(t.step(n3, 4).unwrap(), 9).unwrap();
        assert_eq!(t.complete(leaf), Some(0));
        t.take(0, &paths[0]);
        // The duplicate title is still available, then gone.
        assert_eq!(t.complete(leaf), Some(2));
        t.take(2, &paths[2]);
        assert_eq!(t.complete(leaf), None);
        assert!(t.step(n3, 4).is_none(), "4 leads only to used candidates");
        assert_eq!(t.forced(n3).map(|c| c.0), Some(5));
        t.take(1, &paths[1]);
        assert_eq!(t.allowed(root).map(|c| c.0).collect::<Vec<_>>(), vec![7]);
        t.take(3, &paths[3]);
        assert_eq!(t.remaining(), 0);
        assert_eq!(t.allowed(root).count(), 0);
        assert!(TokenTrie::new(&[vec![]]).is_err());
    }
}
