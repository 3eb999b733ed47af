package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomrt/loom/discovery"
)

// grant asks for a lease with id want (0: a random id), falling back to
// random ids if it is taken. It waits for etcd until ctx ends.
//
// A grant that reaches a member while the cluster elects a leader is
// dropped by raft and would wait for etcd's request timeout (5s and
// more); each attempt is bounded by grantAttempt instead and retried, so
// that a process starting while a failed leader is replaced starts once
// the election is over.
func (d *Discovery) grant(ctx context.Context, want clientv3.LeaseID) (clientv3.LeaseID, time.Duration, error) {
	ttl := int64((d.cfg.LeaseTTL + time.Second - 1) / time.Second)
	id := want
	if id == 0 {
		id = clientv3.LeaseID(discovery.RandomID())
	}
	for taken := 0; ; {
		actx, cancel := context.WithTimeout(ctx, grantAttempt)
		resp, err := d.leases.LeaseGrant(actx, &pb.LeaseGrantRequest{ID: int64(id), TTL: ttl}, grpc.WaitForReady(true))
		cancel()
		if err == nil && resp.Error != "" {
			err = errors.New(resp.Error)
		}
		if err == nil {
			return clientv3.LeaseID(resp.ID), time.Duration(resp.TTL) * time.Second, nil
		}
		if retryable(err) && ctx.Err() == nil {
			continue
		}
		if !errors.Is(rpctypes.Error(err), rpctypes.ErrLeaseExist) || taken >= 10 {
			return 0, 0, fmt.Errorf("grant lease %s: %w", hex(id), err)
		}
		if taken == 0 && want != 0 {
			d.log.Warn("discovery: the etcd lease id is taken by someone else; taking another (the instance id in existing records stays)",
				"lease", hex(want))
		}
		taken++
		id = clientv3.LeaseID(discovery.RandomID())
	}
}

// grantAttempt bounds one lease grant; see grant.
const grantAttempt = time.Second

// retryable reports whether a grant failed for want of a leader or in
// time, and may work if tried again.
func retryable(err error) bool {
	switch rpctypes.Error(err) {
	case rpctypes.ErrNoLeader, rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrLeaderChanged:
		return true
	}
	return isUnavailable(err)
}

// waitLease returns the current lease once it is believed alive.
func (d *Discovery) waitLease(ctx context.Context) (clientv3.LeaseID, error) {
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return 0, discovery.ErrClosed
		}
		if err := d.err; err != nil {
			d.mu.Unlock()
			return 0, err
		}
		ready, lease := d.ready, d.lease
		d.mu.Unlock()
		if isClosed(ready) {
			return lease, nil
		}
		select {
		case <-ready:
		case <-d.done:
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for the etcd lease to be granted again: %w", ctx.Err())
		}
	}
}

// suspectLease tells the keeper that a call found lease missing, so that
// it checks at once instead of at its next keep-alive.
func (d *Discovery) suspectLease(lease clientv3.LeaseID) {
	if d.currentLease() != lease {
		return
	}
	select {
	case d.suspect <- struct{}{}:
	default:
	}
	// Let the caller wait for the keeper instead of spinning.
	d.mu.Lock()
	if d.lease == lease && isClosed(d.ready) && d.err == nil {
		d.ready = make(chan struct{})
	}
	d.mu.Unlock()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// keep is the keeper goroutine: it keeps the lease alive and, when the
// lease is lost, grants a new one and registers every record again (or
// gives up with FailOnLeaseLoss). It ends when ctx does.
func (d *Discovery) keep(ctx context.Context) {
	defer d.wg.Done()
	for {
		lease := d.currentLease()
		d.keepAlive(ctx, lease)
		if ctx.Err() != nil {
			return
		}
		d.mu.Lock()
		n := len(d.owned)
		if isClosed(d.ready) {
			d.ready = make(chan struct{})
		}
		if d.cfg.FailOnLeaseLoss {
			d.finish(fmt.Errorf("%w: lease %s expired or was revoked, and with it %d records (FailOnLeaseLoss is set)", ErrLeaseLost, hex(lease), n))
			d.mu.Unlock()
			d.log.Error("discovery: etcd lease lost; giving up as configured", "lease", hex(lease), "records", n)
			return
		}
		d.mu.Unlock()
		d.log.Error("discovery: etcd lease expired or was revoked; its records are gone from etcd until they are registered again",
			"lease", hex(lease), "records", n)
		if !d.recover(ctx, lease) {
			return
		}
	}
}

// keepAlive renews lease every third of its TTL until etcd says it is gone
// (it returns) or ctx ends. While etcd is unreachable it keeps trying:
// etcd, not this process's clock, decides whether the lease expired.
func (d *Discovery) keepAlive(ctx context.Context, lease clientv3.LeaseID) {
	d.mu.Lock()
	ttl := d.ttl
	d.mu.Unlock()
	interval := max(ttl/3, 100*time.Millisecond)
	lastOK := time.Now()
	var failing, expiredLogged bool
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-d.suspect:
		}
		kctx, cancel := context.WithTimeout(ctx, interval)
		_, err := d.cli.KeepAliveOnce(kctx, lease)
		cancel()
		switch {
		case err == nil:
			if failing {
				d.log.Info("discovery: etcd reachable again; the lease is still alive", "lease", hex(lease), "unreachable_for", time.Since(lastOK).Round(time.Millisecond))
			}
			failing, expiredLogged = false, false
			lastOK = time.Now()
			d.markReady(lease)
			d.removeOrphans(ctx)
			timer.Reset(interval)
		case isLeaseNotFound(err):
			return
		case ctx.Err() != nil:
			return
		default:
			if !failing {
				d.log.Warn("discovery: etcd lease keep-alive failing; records stay until the lease expires", "lease", hex(lease), "error", err)
				failing = true
			}
			if since := time.Since(lastOK); since > ttl && !expiredLogged {
				d.log.Warn("discovery: etcd unreachable for longer than the lease TTL; if etcd is up for others, the lease has expired and they no longer see this process's records, which are registered again once etcd answers",
					"lease", hex(lease), "unreachable_for", since.Round(time.Millisecond), "ttl", ttl)
				expiredLogged = true
			}
			timer.Reset(interval / 4)
		}
	}
}

// removeOrphans deletes the records whose Unregister failed, each only if
// it is still the revision this Discovery wrote, so that a record
// registered again since stays. What it cannot delete waits for the next
// keep-alive.
func (d *Discovery) removeOrphans(ctx context.Context) {
	d.mu.Lock()
	orphans := maps.Clone(d.orphans)
	d.mu.Unlock()
	if len(orphans) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.DialTimeout)
	defer cancel()
	for _, key := range slices.Sorted(maps.Keys(orphans)) {
		_, err := d.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", orphans[key])).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			d.log.Warn("discovery: cannot remove a record whose Unregister failed yet; retrying", "key", key, "error", err)
			return
		}
		d.mu.Lock()
		if d.orphans[key] == orphans[key] {
			delete(d.orphans, key)
		}
		d.mu.Unlock()
		d.log.Info("discovery: removed a record whose Unregister had failed", "key", key)
	}
}

// markReady marks lease alive again after a suspicion that proved wrong.
func (d *Discovery) markReady(lease clientv3.LeaseID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lease == lease && d.err == nil && !isClosed(d.ready) {
		close(d.ready)
	}
}

// recover grants a lease (the same id if it is free) and registers every
// record again, retrying with jittered exponential backoff until it has
// or ctx ends. It reports whether it succeeded.
func (d *Discovery) recover(ctx context.Context, old clientv3.LeaseID) bool {
	b := backoff{min: 100 * time.Millisecond, max: min(5*time.Second, max(d.cfg.LeaseTTL, time.Second))}
	// Spread a fleet that lost its leases at once.
	delay := time.Duration(rand.Int64N(int64(min(250*time.Millisecond, d.cfg.LeaseTTL/4) + 1)))
	var lease clientv3.LeaseID
	for attempt := 1; ; attempt++ {
		if !sleep(ctx, delay) {
			return false
		}
		delay = b.next()
		octx, cancel := context.WithTimeout(ctx, d.cfg.DialTimeout)
		var err error
		if lease == clientv3.NoLease {
			var ttl time.Duration
			lease, ttl, err = d.grant(octx, old)
			if err == nil {
				// Current at once, so that Close revokes it; callers
				// still wait for ready.
				d.mu.Lock()
				d.lease, d.ttl = lease, ttl
				d.mu.Unlock()
			}
		}
		var n int
		if err == nil {
			n, err = d.reregister(octx, lease)
		}
		cancel()
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			d.log.Info("discovery: registered the records again under a new etcd lease",
				"lease", hex(lease), "same_id", lease == old, "instance_id", strconv.FormatUint(d.id, 16), "records", n, "attempts", attempt)
			return true
		}
		if isLeaseNotFound(err) {
			lease = clientv3.NoLease
		}
		if attempt == 1 || attempt%10 == 0 {
			d.log.Warn("discovery: cannot register the records again in etcd yet; retrying", "attempt", attempt, "retry_in", delay.Round(time.Millisecond), "error", err)
		}
	}
}

// reregister makes lease the current lease and writes every owned record
// under it; records already there under lease are left alone, records
// that someone else took meanwhile are given up. Register and Unregister
// wait until it is done. On success the lease is marked ready.
func (d *Discovery) reregister(ctx context.Context, lease clientv3.LeaseID) (int, error) {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	d.mu.Lock()
	d.lease = lease
	owned := maps.Clone(d.owned)
	clear(d.orphans) // gone with the lost lease
	d.mu.Unlock()
	for _, key := range slices.Sorted(maps.Keys(owned)) {
		resp, err := d.create(ctx, key, owned[key].value, lease)
		if err != nil {
			return 0, fmt.Errorf("register %s: %w", key, err)
		}
		if resp.Succeeded {
			d.setRev(key, resp.Header.Revision)
			continue
		}
		kv := existing(resp)
		switch {
		case kv == nil:
		case clientv3.LeaseID(kv.Lease) != lease:
			d.log.Warn("discovery: a record was registered by another client while this one had no lease; leaving it to that client",
				"key", key, "their_lease", hex(clientv3.LeaseID(kv.Lease)))
			d.mu.Lock()
			delete(d.owned, key)
			d.mu.Unlock()
		default:
			d.setRev(key, kv.ModRevision)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil && !isClosed(d.ready) {
		close(d.ready)
	}
	return len(owned), nil
}

// setRev records the mod revision of the owned record under key, if it
// is still owned.
func (d *Discovery) setRev(key string, rev int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r, ok := d.owned[key]; ok {
		r.rev = rev
		d.owned[key] = r
	}
}

func isLeaseNotFound(err error) bool {
	return errors.Is(rpctypes.Error(err), rpctypes.ErrLeaseNotFound)
}

func isUnavailable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// backoff is exponential backoff with jitter: each delay is drawn from
// [d/2, 3d/2) around a d that doubles from min up to max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur/2 + time.Duration(rand.Int64N(int64(b.cur)))
}

// sleep waits for d or ctx, reporting whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
