package networkpolicy

// Added by session-manager (scripts/build-kind.sh): this kernel has nf_tables and the xtables NFQUEUE
// target (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NFT_COMPAT) but not the native nft "queue"
// expression (CONFIG_NFT_QUEUE is not set), so a rule with expr.Queue fails with ENOENT and no
// policy is ever enforced. The xtables target through nft_compat queues to the same
// nfnetlink_queue, so the userspace side of the controller is unchanged.

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// xtQueue returns the nft_compat form of `queue num N [bypass]`: the xt NFQUEUE target, revision
// 3 (struct xt_NFQ_info_v3 {__u16 queuenum; __u16 queues_total; __u16 flags;}).
func xtQueue(num uint16, bypass bool) expr.Any {
	info := make([]byte, 8) // XT_ALIGN(6)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1) // queues_total
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], 1) // NFQ_FLAG_BYPASS
	}
	raw := xt.Unknown(info)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &raw}
}
