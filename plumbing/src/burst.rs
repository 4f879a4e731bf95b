//! Taking a queue's items in bursts, so that one write carries what many tasks made ready
//! together.
//!
//! Why: on tokio's multi-threaded scheduler a task woken by the running task goes to the
//! worker's LIFO slot and runs next. A queue's consumer woken by the first of many producers
//! that became ready at once (every HTTP handler whose answer a step decided, every proposal
//! task a decision woke) therefore runs after that first producer alone, takes its one item,
//! writes it (a syscall and a wake-up on the other side), and is woken again by the next
//! producer: N items, N writes. On one worker, as every process of the cluster runs on two
//! cores, that was a frame per command on the node's propose stream and an answer frame per
//! proposal back (measured with `strace`, see docs/performance.md).
//!
//! [`recv_burst`] waits for the first item, then yields once: the producers that were already
//! ready run and queue their items first, and the consumer takes them all. A lone item costs
//! one more pass through the scheduler, no waiting: nothing else is ready then.
use tokio::sync::mpsc;

/// Waits for at least one item of `queue`, yields once to let the tasks that are ready add
/// theirs, then moves every item queued (at most `limit` in all) into `buffer`. Returns how
/// many it moved; 0 only when the queue is closed and empty (as [`mpsc::Receiver::recv_many`]).
///
/// Cancel-safe like `recv_many`: an item taken is already in `buffer`.
pub async fn recv_burst<T>(
    queue: &mut mpsc::Receiver<T>,
    buffer: &mut Vec<T>,
    limit: usize,
) -> usize {
    let taken = queue.recv_many(buffer, limit).await;
    if taken == 0 || taken >= limit {
        return taken;
    }
    taken + take_the_rest(queue, buffer, limit - taken).await
}

/// The second half of [`recv_burst`], for a consumer that got its first item some other way
/// (a branch of a `select!`): yields once, then moves what is queued (at most `limit`) into
/// `buffer`. Returns how many it moved.
pub async fn take_the_rest<T>(
    queue: &mut mpsc::Receiver<T>,
    buffer: &mut Vec<T>,
    limit: usize,
) -> usize {
    tokio::task::yield_now().await;
    let mut taken = 0;
    while taken < limit {
        match queue.try_recv() {
            Ok(item) => {
                buffer.push(item);
                taken += 1;
            }
            Err(_) => break,
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten producers woken at once by a task on the same worker (as a driver step wakes the
    /// handlers whose commands it decided), each queueing one item; returns the sizes of the
    /// bursts the consumer took. (With `recv_many` alone the consumer, woken into the LIFO slot
    /// by the first producer, took them one at a time: `[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]`.)
    fn bursts_of(limit: usize) -> Vec<usize> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            tokio::spawn(async move {
                let (tx, mut rx) = mpsc::channel(64);
                let (go, ready) = tokio::sync::watch::channel(false);
                for i in 0..10 {
                    let (tx, mut ready) = (tx.clone(), ready.clone());
                    tokio::spawn(async move {
                        ready.wait_for(|go| *go).await.expect("the trigger stays");
                        tx.send(i).await.expect("the consumer stays");
                    });
                }
                drop(tx);
                let consumer = tokio::spawn(async move {
                    let (mut sizes, mut buffer) = (Vec::new(), Vec::new());
                    loop {
                        let n = recv_burst(&mut rx, &mut buffer, limit).await;
                        if n == 0 {
                            return sizes;
                        }
                        assert_eq!(buffer.len(), n, "what it took is in the buffer");
                        sizes.push(n);
                        buffer.clear();
                    }
                });
                // Every producer and the consumer park first.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                go.send(true).expect("producers wait");
                consumer.await.expect("the consumer ends")
            })
            .await
            .expect("the scenario ends")
        })
    }

    #[test]
    fn items_made_ready_together_are_taken_in_one_burst() {
        let sizes = bursts_of(64);
        assert_eq!(sizes, vec![10], "one burst of all ten");
    }

    #[test]
    fn a_burst_stops_at_its_limit_and_the_rest_follows() {
        let sizes = bursts_of(4);
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[tokio::test]
    async fn a_closed_empty_queue_gives_nothing_and_a_lone_item_does_not_wait() {
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(7u32).await.expect("room");
        let mut buffer = Vec::new();
        assert_eq!(recv_burst(&mut rx, &mut buffer, 8).await, 1);
        assert_eq!(buffer, vec![7]);
        drop(tx);
        assert_eq!(recv_burst(&mut rx, &mut buffer, 8).await, 0);
    }
}
