"""Rewrites kube-network-policies' native nft queue expressions to the xt NFQUEUE target.

Usage: python3 knp-xtqueue.py MODULE_COPY_DIR. Fails if the source does not look as expected.
"""
import pathlib
import sys

root = pathlib.Path(sys.argv[1]) / "pkg" / "networkpolicy"

controller_old = """	queue := &expr.Queue{Num: uint16(c.config.QueueID)}
	if c.config.FailOpen {
		queue.Flag = expr.QueueFlagBypass
	}
"""
controller_new = """	queue := xtQueue(uint16(c.config.QueueID), c.config.FailOpen)
"""
dns_old = "&expr.Queue{Num: uint16(n.nfQueueID), Flag: expr.QueueFlagBypass},"
dns_new = "xtQueue(uint16(n.nfQueueID), true),"

for name, old, new, count in (
    ("controller.go", controller_old, controller_new, 2),
    ("dnsagent.go", dns_old, dns_new, 1),
):
    path = root / name
    text = path.read_text()
    found = text.count(old)
    if found != count:
        sys.exit(f"{path}: expected {count} occurrence(s) of the queue expression, found {found}")
    path.write_text(text.replace(old, new))

left = [p.name for p in root.glob("*.go") if "expr.Queue{" in p.read_text()]
if left:
    sys.exit(f"native queue expressions left in {left}")
print("patched", root)
