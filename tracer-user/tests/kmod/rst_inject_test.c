// SPDX-License-Identifier: GPL-2.0
/*
 * A kernel module that answers SYNs to one port with a RST it builds
 * itself, as in-kernel intrusion-prevention modules do: the RST is neither
 * the TCP stack's nor netfilter's REJECT, so rsttrace must call it
 * `injected` and name this module. Loaded by the trace tests in
 * `cargo xtask vm-test` (see tests/injected.rs, injected_by_a_kernel_module).
 *
 * Parameters: port (the TCP destination port to answer, 0: none), and
 * sent (read-only: the RSTs sent, the test's ground truth).
 */
#include <linux/module.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/skbuff.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <net/ip.h>
#include <net/tcp.h>
#include <net/route.h>
#include <net/net_namespace.h>

static ushort port;
module_param(port, ushort, 0644);
MODULE_PARM_DESC(port, "TCP port whose SYNs get a RST (0: none)");

static atomic_t sent_count = ATOMIC_INIT(0);
static int sent_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&sent_count));
}
static const struct kernel_param_ops sent_ops = { .get = sent_get };
module_param_cb(sent, &sent_ops, NULL, 0444);
MODULE_PARM_DESC(sent, "RSTs sent so far");

static noinline void rst_inject_test_send(struct net *net,
					  struct sk_buff *oldskb,
					  const struct tcphdr *oth)
{
	const struct iphdr *oiph = ip_hdr(oldskb);
	struct sk_buff *nskb;
	struct iphdr *iph;
	struct tcphdr *th;

	nskb = alloc_skb(sizeof(*iph) + sizeof(*th) + LL_MAX_HEADER, GFP_ATOMIC);
	if (!nskb)
		return;
	skb_reserve(nskb, LL_MAX_HEADER);

	skb_reset_network_header(nskb);
	iph = skb_put_zero(nskb, sizeof(*iph));
	iph->version = 4;
	iph->ihl = sizeof(*iph) / 4;
	iph->frag_off = htons(IP_DF);
	iph->ttl = 64;
	iph->protocol = IPPROTO_TCP;
	iph->saddr = oiph->daddr;
	iph->daddr = oiph->saddr;
	iph->tot_len = htons(sizeof(*iph) + sizeof(*th));

	skb_reset_transport_header(nskb);
	th = skb_put_zero(nskb, sizeof(*th));
	th->source = oth->dest;
	th->dest = oth->source;
	th->doff = sizeof(*th) / 4;
	th->rst = 1;
	th->ack = 1;
	th->ack_seq = htonl(ntohl(oth->seq) + 1);
	th->check = tcp_v4_check(sizeof(*th), iph->saddr, iph->daddr,
				 csum_partial(th, sizeof(*th), 0));
	nskb->ip_summed = CHECKSUM_NONE;
	nskb->protocol = htons(ETH_P_IP);

	/* ip_route_me_harder expects a dst: the incoming one's, as nf_reject. */
	skb_dst_set_noref(nskb, skb_dst(oldskb));
	if (ip_route_me_harder(net, NULL, nskb, RTN_UNSPEC)) {
		kfree_skb(nskb);
		return;
	}
	atomic_inc(&sent_count);
	ip_local_out(net, NULL, nskb);
}

static unsigned int rst_inject_test_hook(void *priv, struct sk_buff *skb,
					 const struct nf_hook_state *state)
{
	struct tcphdr _th;
	const struct tcphdr *th;

	if (!port || ip_hdr(skb)->protocol != IPPROTO_TCP)
		return NF_ACCEPT;
	th = skb_header_pointer(skb, ip_hdrlen(skb), sizeof(_th), &_th);
	if (!th || !th->syn || th->ack || ntohs(th->dest) != port)
		return NF_ACCEPT;
	rst_inject_test_send(state->net, skb, th);
	return NF_DROP;
}

static const struct nf_hook_ops rst_inject_test_ops = {
	.hook = rst_inject_test_hook,
	.pf = NFPROTO_IPV4,
	.hooknum = NF_INET_LOCAL_IN,
	.priority = NF_IP_PRI_FIRST,
};

static int __net_init rst_inject_test_net_init(struct net *net)
{
	return nf_register_net_hook(net, &rst_inject_test_ops);
}

static void __net_exit rst_inject_test_net_exit(struct net *net)
{
	nf_unregister_net_hook(net, &rst_inject_test_ops);
}

static struct pernet_operations rst_inject_test_net_ops = {
	.init = rst_inject_test_net_init,
	.exit = rst_inject_test_net_exit,
};

static int __init rst_inject_test_init(void)
{
	return register_pernet_subsys(&rst_inject_test_net_ops);
}

static void __exit rst_inject_test_exit(void)
{
	unregister_pernet_subsys(&rst_inject_test_net_ops);
}

module_init(rst_inject_test_init);
module_exit(rst_inject_test_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("rsttrace test: RSTs built by a kernel module");
