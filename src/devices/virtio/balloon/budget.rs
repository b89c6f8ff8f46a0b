//! How much work one queue notification may make the device do.
//!
//! A notification is handled under the balloon's lock, which the API waits for, so what a
//! driver can put behind one kick must be bounded by what a real driver needs, not by what
//! the ring can describe. The ring alone allows a queue's worth of chains, each of a
//! queue's worth of descriptors of up to 4 GiB: terabytes of PFNs or free ranges.
//!
//! Each queue gets a budget per notification sized to guest RAM, which no real driver
//! reaches (Linux sends 256 PFNs or 32 free blocks and waits for them to come back):
//! inflateq as many PFNs as RAM has pages, reporting_vq and free_page_vq as many bytes of
//! free ranges as RAM holds. What lies past the budget is left alone, its buffers are
//! returned as usual (the driver waits for them), and the device logs the fact once.

/// What is left of one notification's allowance, in the queue's own unit (PFNs or bytes).
#[derive(Debug)]
pub(super) struct Budget {
    left: u64,
    exceeded: bool,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            left: limit,
            exceeded: false,
        }
    }

    /// How many of the `wanted` units may be processed: all of them while the budget
    /// lasts, then fewer, down to 0, and from then on the budget counts as exceeded.
    pub fn grant(&mut self, wanted: u64) -> u64 {
        let granted = wanted.min(self.left);
        self.left -= granted;
        self.exceeded |= granted < wanted;
        granted
    }

    /// Whether something was asked for that the budget could not grant.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_up_to_the_limit_then_nothing() {
        let mut budget = Budget::new(10);
        assert_eq!(budget.grant(4), 4);
        assert!(!budget.exceeded());
        assert_eq!(budget.grant(6), 6);
        assert!(
            !budget.exceeded(),
            "spending exactly the limit is not exceeding it"
        );
        assert_eq!(budget.grant(0), 0);
        assert!(!budget.exceeded());
        assert_eq!(budget.grant(1), 0);
        assert!(budget.exceeded());
    }

    #[test]
    fn a_partial_grant_exceeds_the_budget() {
        let mut budget = Budget::new(10);
        assert_eq!(budget.grant(u64::MAX), 10);
        assert!(budget.exceeded());
        assert_eq!(budget.grant(u64::MAX), 0);
    }
}
