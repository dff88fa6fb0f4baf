// dio-append: what a recorder's write pattern costs with buffered writes against O_DIRECT.
// Usage: dio-append FILES SECONDS b|d|f DIR [PERIOD]
// Appends block-aligned writes (4 KiB, every third one 8 KiB: 5.5 KB on average, about what a
// call at 13 packets a second flushes every two seconds) round-robin over FILES files at
// FILES/2 writes a second (each file once every two seconds), syncfs every 2 s, `b` buffered,
// `d` O_DIRECT or `f` buffered into 256 KiB that fallocate(KEEP_SIZE) reserved at creation;
// PERIOD (default 2) s between a file's writes, each as much bigger; prints the whole VM's busy
// CPU (/proc/stat, USER_HZ 100) and this process's user and system CPU. Build: gcc -O2 -o dio-append dio-append.c (see docs/BENCHMARKS.md, twenty-second session).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/stat.h>
static double busy(void){unsigned long long v[10]={0};FILE*f=fopen("/proc/stat","r");if(!f||fscanf(f,"cpu %llu %llu %llu %llu %llu %llu %llu %llu",&v[0],&v[1],&v[2],&v[3],&v[4],&v[5],&v[6],&v[7])!=8){perror("/proc/stat");exit(1);}fclose(f);return (v[0]+v[1]+v[2]+v[5]+v[6]+v[7])/100.0;}
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  if(argc<5||!strchr("bdf",argv[3][0])){fprintf(stderr,"usage: %s FILES SECONDS b|d|f DIR [PERIOD]\n",argv[0]);return 2;}
  int n=atoi(argv[1]); double secs=atof(argv[2]); int direct=argv[3][0]=='d', falloc=argv[3][0]=='f'; const char*dir=argv[4]; int period=argc>5?atoi(argv[5]):2; if(period<2)period=2;
  int *fd=malloc(n*sizeof(int)); long *off=calloc(n,sizeof(long));
  char p[512];
  for(int i=0;i<n;i++){snprintf(p,sizeof p,"%s/f%d",dir,i);fd[i]=open(p,O_CREAT|O_WRONLY|O_TRUNC|(direct?O_DIRECT:0),0600);if(fd[i]<0){perror(p);return 1;} if(falloc&&fallocate(fd[i],FALLOC_FL_KEEP_SIZE,0,256*1024)){perror("fallocate");return 1;}}
  void*buf=NULL; size_t unit=4096*(period/2); if(posix_memalign(&buf,4096,2*unit)){perror("posix_memalign");return 1;} memset(buf,0x5a,2*unit);
  double b0=busy(); double t0=now(), next=t0, lastsync=t0; long w=0; double rate=(double)n/period; long bytes=0; double maxlat=0;
  while(now()-t0<secs){
    int i=w%n; size_t len=(w%3==0)?2*unit:unit;
    double a=now();
    if(pwrite(fd[i],buf,len,off[i])!=(ssize_t)len){perror("pwrite");return 1;}
    double l=now()-a; if(l>maxlat)maxlat=l;
    off[i]+=len; bytes+=len; w++;
    next+=1.0/rate; if(w%64) continue; double d=next-now(); if(d>0){struct timespec ts={(time_t)d,(long)((d-(time_t)d)*1e9)};nanosleep(&ts,0);}
    if(now()-lastsync>=2){syncfs(fd[0]);lastsync=now();}
  }
  struct rusage ru; getrusage(RUSAGE_SELF,&ru);
  printf("all-cpu busy %.2f s  ",busy()-b0); printf("%s period %d files %d writes %ld (%.0f/s) MB %.0f wall %.1f user %.2f sys %.2f maxlat %.1f ms\n",direct?"direct":falloc?"fallocated":"buffered",period,n,w,w/(now()-t0),bytes/1e6,now()-t0,
    ru.ru_utime.tv_sec+ru.ru_utime.tv_usec/1e6, ru.ru_stime.tv_sec+ru.ru_stime.tv_usec/1e6, maxlat*1e3);
  return 0;
}
