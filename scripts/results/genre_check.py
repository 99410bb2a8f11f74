# Is there anything in the items that Markov's order lacks? Re-ranks Markov's top 20 (the plugin's
# defaults, re-implemented: it reproduces palr's test NDCG@10 0.0963) by -ln(1+position) + 10*lg*genre
# cosine + 10*lk*item-kNN overlap, and prints NDCG@10 for each (lg, lk). python3 scripts/results/genre_check.py valid|test (item-genres experiment)

import collections, math, os, sys
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../data/ml-100k")
import numpy as np
inter = collections.defaultdict(list)
for i,l in enumerate(open(os.path.join(DATA, 'ml-100k.inter'))):
    if i==0: continue
    u,it,r,t = l.split('\t'); inter[int(u)].append((float(t), int(it)))
genres={}; year={}
for i,l in enumerate(open(os.path.join(DATA, 'ml-100k.item'))):
    if i==0: continue
    p=l.rstrip('\n').split('\t'); genres[int(p[0])]=set(p[3].split()); year[int(p[0])]=int(p[2]) if p[2].isdigit() else 1990
seqs={u:[it for _,it in sorted(v)] for u,v in inter.items()}
split=sys.argv[1] if len(sys.argv)>1 else 'valid'
N=max(genres)+1
def train_view(u):
    s=seqs[u]
    return s[:-2] if split=='valid' else s[:-1]
trains={u:train_view(u) for u in seqs}
target={u:(seqs[u][-2] if split=='valid' else seqs[u][-1]) for u in seqs}
# markov
trans=collections.defaultdict(collections.Counter)
pop=collections.Counter()
for s in trains.values():
    for a,b in zip(s,s[1:]): trans[a][b]+=1
    pop.update(s)
P={a:{b:c/sum(cnt.values()) for b,c in cnt.items()} for a,cnt in trans.items()}
# item-item cosine co-occurrence (itemknn-ish)
users_of=collections.defaultdict(set)
for u,s in trains.items():
    for it in s: users_of[it].add(u)
G=sorted({g for gs in genres.values() for g in gs}); gi={g:i for i,g in enumerate(G)}
GV=np.zeros((N,len(G)))
for it,gs in genres.items():
    for g in gs: GV[it,gi[g]]=1
def markov(h):
    sc=collections.Counter()
    for p,it in enumerate(reversed(h[-3:])):
        for j,pj in P.get(it,{}).items(): sc[j]+=0.5**p*pj
    hs=set(h)
    ranked=[j for j,_ in sorted(sc.items(), key=lambda x:(-x[1],x[0])) if j not in hs]
    if len(ranked)<20:
        for j,_ in pop.most_common():
            if j not in hs and j not in sc: ranked.append(j)
            if len(ranked)>=20: break
    return ranked[:20], sc
def ndcg(rank): return 1/math.log2(rank+2) if rank<10 else 0
res=collections.defaultdict(list)
lam_g=[0,0.1,0.2,0.3,0.5,0.8]; lam_k=[0,0.2,0.5,1.0]
for u in sorted(seqs):
    h=trains[u]; t=target[u]
    cands, sc = markov(h)
    pos=np.arange(len(cands))
    prior=-np.log1p(pos)
    hist20=h[-20:]
    prof=GV[hist20].mean(0); prof=prof/ (np.linalg.norm(prof)+1e-9)
    gsim=np.array([GV[c]@prof/(np.linalg.norm(GV[c])+1e-9) for c in cands])
    hu=[users_of[x] for x in hist20]
    knn=np.array([sum(len(users_of[c]&x)/math.sqrt(len(users_of[c])*len(x)+1e-9) for x in hu)/len(hu) for c in cands])
    knn=knn/(knn.max()+1e-9)
    for lg in lam_g:
        for lk in lam_k:
            s=prior+ lg*10*gsim + lk*10*knn
            order=np.argsort(-s, kind='stable')
            r=[cands[i] for i in order]
            res[(lg,lk)].append(ndcg(r.index(t)) if t in r else 0)
for k,v in sorted(res.items()):
    print(k, round(np.mean(v),4), len(v))
