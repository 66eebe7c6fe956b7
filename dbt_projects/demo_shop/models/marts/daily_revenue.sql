{#-
    One row per UTC calendar day with at least one counted order. Same order
    filter as customer_orders: returned orders and orders below
    var('demo_shop_min_order_amount') are left out.
-#}

with orders as (

    select * from {{ ref('stg_orders') }}
    where status <> 'returned'
      and amount >= {{ var('demo_shop_min_order_amount') }}

)

select
    order_date,
    count(*)                        as orders,
    sum(amount)::decimal(14, 2)     as revenue

from orders
group by order_date
