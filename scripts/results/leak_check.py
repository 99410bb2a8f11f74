# The own-transition leak in `palr sft-data` lists (see benchmarks/results/experiments/item-genres/README.md): Markov fitted on every
# training part vs on the training part without each user's last 8 items, scored on those last
# 8 positions. Standard library + numpy; run from anywhere: python3 scripts/results/leak_check.py (item-genres experiment)

import collections, numpy as np
inter = collections.defaultdict(list)
for i,l in enumerate(open(__import__('os').path.join(__import__('os').path.dirname(__import__('os').path.abspath(__file__)), '../../data/ml-100k/ml-100k.inter'))):
    if i==0: continue
    u,it,r,t = l.split('\t'); inter[int(u)].append((float(t), int(it)))
seqs={u:[it for _,it in sorted(v)] for u,v in inter.items()}
train={u:s[:-2] for u,s in seqs.items()}
def fit(tr):
    trans=collections.defaultdict(collections.Counter); pop=collections.Counter()
    for s in tr.values():
        for a,b in zip(s,s[1:]): trans[a][b]+=1
        pop.update(s)
    P={a:{b:c/sum(cnt.values()) for b,c in cnt.items()} for a,cnt in trans.items()}
    return P,pop
def top20(P,pop,h,excl):
    sc=collections.Counter()
    for p,it in enumerate(reversed(h[-3:])):
        for j,pj in P.get(it,{}).items(): sc[j]+=0.5**p*pj
    r=[j for j,_ in sorted(sc.items(), key=lambda x:(-x[1],x[0])) if j not in excl]
    for j,_ in pop.most_common():
        if len(r)>=20: break
        if j not in excl and j not in sc: r.append(j)
    return r[:20]
leak=fit(train); tailfit=fit({u:s[:-8] for u,s in train.items()})
for name,(P,pop) in [('leak (fit on all train)',leak),('tail 8 (fit before)',tailfit)]:
    hits=0;n=0;pos=[];popq=[]
    for u,s in train.items():
        allitems=set(seqs[u])
        for t in range(max(1,len(s)-8),len(s)):
            h=s[:t]; tgt=s[t]
            excl=set(h)|(allitems-{tgt})
            r=top20(P,pop,h,excl); n+=1
            if tgt in r:
                hits+=1; pos.append(r.index(tgt))
                # popularity percentile of the target within the list (0 = least popular)
                pp=[pop[c] for c in r]; popq.append(np.mean([x<pop[tgt] for x in pp]))
    print(f"{name}: recall@20 {hits/n:.3f} ({n} positions); mean target position {np.mean(pos):.2f}; target at position 0: {np.mean(np.array(pos)==0):.3f}; target popularity percentile in list {np.mean(popq):.3f}")
